import {promises as fs, lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import type {CopyPlan} from './context.js'
import {resolveInRoot} from './paths.js'

/** Who owns what COPY makes, and the mode it forces (`--chown`, `--chmod`). */
export interface CopyOwnership {
  chmod?: number
  gid: number
  /** Each entry keeps its source's owner (COPY --from without --chown, as buildah does). */
  keep?: boolean
  uid: number
}

/**
 * Copies `plan` into the tree at `root` (a mounted stack or a wafer's data) at `dest`, an absolute
 * container path. The destination is resolved inside `root` (symlinks followed only within it);
 * directories it has to make belong to the copy's owner. Entries replace what is there, a link
 * never being written through.
 */
export async function copyInto(root: string, plan: CopyPlan, dest: string, own: CopyOwnership): Promise<void> {
  // COPY file /existing-dir/ copies into the directory, as Docker does.
  const destIsDir = plan.destIsDir || statOrUndefined(resolveInRoot(root, dest))?.isDirectory() === true
  const target = destIsDir ? await mkdirIn(root, dest, own) : await parentIn(root, dest, own)
  const links = new Map<string, string>()
  for (const planned of plan.entries) {
    const entry = destIsDir && planned.rel === '' && planned.kind !== 'dir' ? {...planned, rel: planned.name} : planned
    const to = entry.rel === '' ? target : resolveInRoot(root, path.join(path.relative(root, target), entry.rel), false)
    if (!isInside(root, to)) throw new WafersError(`${entry.from} would land outside the new wafer.`)
    const mode = own.chmod ?? entry.mode
    const {gid, uid} = own.keep ? entry.owner : own
    if (entry.kind === 'dir') {
      if (entry.rel === '') continue
      const there = statOrUndefined(to)
      if (there && !there.isDirectory()) await fs.rm(to, {force: true, recursive: true})
      if (!there?.isDirectory()) await fs.mkdir(to)
      await fs.chown(to, uid, gid)
      await fs.chmod(to, mode)
      await fs.utimes(to, entry.mtime, entry.mtime)
      continue
    }

    const there = statOrUndefined(to)
    if (there?.isDirectory())
      throw new WafersError(`cannot copy ${entry.from} onto the directory ${path.relative(root, to)}.`)
    if (there) await fs.rm(to, {force: true})
    if (entry.kind === 'symlink') {
      await fs.symlink(await fs.readlink(entry.source), to)
      await fs.lchown(to, uid, gid)
      await fs.lutimes(to, entry.mtime, entry.mtime)
      continue
    }

    // A copy from a stage or image keeps its hard links and extended attributes, as buildah's.
    const source = own.keep ? lstatSync(entry.source) : undefined
    const linked = source && source.nlink > 1 ? links.get(`${source.dev}:${source.ino}`) : undefined
    if (linked !== undefined) {
      await fs.link(linked, to)
      continue
    }

    await fs.copyFile(entry.source, to, 0)
    await fs.chown(to, uid, gid)
    await fs.chmod(to, mode)
    if (source) {
      await copyAttributes(entry.source, to)
      if (source.nlink > 1) links.set(`${source.dev}:${source.ino}`, to)
    }

    await fs.utimes(to, entry.mtime, entry.mtime)
  }

  // Directories last: writing into them changed their times.
  for (const entry of [...plan.entries].reverse()) {
    if (entry.kind !== 'dir' || entry.rel === '') continue
    const to = resolveInRoot(root, path.join(path.relative(root, target), entry.rel), false)
    await fs.utimes(to, entry.mtime, entry.mtime)
  }
}

/** Makes directory `dest` (container path) inside `root`, missing parents too, owned by the copy's owner. */
export async function mkdirIn(root: string, dest: string, own?: {gid: number; uid: number}): Promise<string> {
  const resolved = resolveInRoot(root, dest)
  if (!isInside(root, resolved)) throw new WafersError(`${dest} leads outside the new wafer.`)
  const missing: string[] = []
  for (let dir = resolved; dir !== root && statOrUndefined(dir) === undefined; dir = path.dirname(dir))
    missing.unshift(dir)
  for (const dir of missing) {
    await fs.mkdir(dir, {mode: 0o755})
    if (own) await fs.chown(dir, own.uid, own.gid)
  }

  const stat = statOrUndefined(resolved)
  if (!stat?.isDirectory()) throw new WafersError(`${dest} exists in the image and is not a directory.`)
  return resolved
}

async function parentIn(root: string, dest: string, own: CopyOwnership): Promise<string> {
  const dir = await mkdirIn(root, path.posix.dirname(dest), own)
  return path.join(dir, path.posix.basename(dest))
}

function statOrUndefined(file: string) {
  try {
    return lstatSync(file)
  } catch (error) {
    if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) return undefined
    throw error
  }
}

function isInside(root: string, file: string): boolean {
  const rel = path.relative(root, file)
  return !rel.startsWith('..') && !path.isAbsolute(rel)
}

/** Parses `--chmod=OCTAL`. */
export function parseChmod(spec: string | undefined): number | undefined {
  if (spec === undefined) return undefined
  if (!/^[0-7]{3,4}$/.test(spec)) throw new WafersError(`--chmod takes an octal mode such as 644 or 0755, not ${spec}.`)
  return Number.parseInt(spec, 8)
}

/** Whether `file` starts like a tar archive, plain or compressed (gzip, bzip2, xz, zstd). */
export async function isArchive(file: string): Promise<boolean> {
  const handle = await fs.open(file, 'r')
  try {
    const buffer = Buffer.alloc(262)
    const {bytesRead} = await handle.read(buffer, 0, 262, 0)
    const head = buffer.subarray(0, bytesRead)
    if (head[0] === 0x1f && head[1] === 0x8b) return true
    if (head.subarray(0, 3).toString('latin1') === 'BZh') return true
    if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return true
    if (head.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return true
    return bytesRead >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar'
  } finally {
    await handle.close()
  }
}

/**
 * Unpacks tarball `file` (plain, gzip, bzip2, xz or zstd) into the tree at `root` under directory
 * `dest` (a container path), as ADD does, through the one tar reader and unpacker
 * (layer/unpack.ts): no `../` or absolute name, nothing through a link, every entry written by
 * wafers itself through held directories, so no symbolic link of the image or the archive leads a
 * write out of `root`. Owners, modes, times and xattrs are kept (overlay's own attributes escaped
 * by the one attribute policy, so a tarball cannot make a directory opaque); existing directories
 * keep theirs, as `tar --no-overwrite-dir` does. `scratch` is no longer used (kept for callers).
 */
export async function unpackArchive(
  file: string,
  root: string,
  dest: string,
  _scratch: string,
  own: CopyOwnership,
): Promise<void> {
  const {unpackTarball} = await import('../layer/unpack.js')
  // As buildah does: the directories made above DEST take --chown, DEST itself stays root's.
  await mkdirIn(root, path.posix.dirname(dest.replace(/\/+$/, '') || '/'), own)
  const target = await mkdirIn(root, dest)
  const inImage = path.posix.join('/', path.relative(root, target))
  await unpackTarball(file, target, {
    keepExisting: true,
    name: path.basename(file),
    // A symlinked directory of the image (/lib -> usr/lib) is followed within the image, as ADD does.
    resolveExisting(rel) {
      const resolved = resolveInRoot(root, path.posix.join(inImage, rel))
      return isInside(root, resolved) && statOrUndefined(resolved)?.isDirectory() ? resolved : undefined
    },
  })
}

/**
 * Copies the user.* and security.* attributes of `source` onto `to`, a file wafers just made; as
 * buildah's copier does, trusted.* (overlayfs's own among them) is never copied.
 */
async function copyAttributes(source: string, to: string): Promise<void> {
  const xattr = await import('@napi-rs/xattr')
  const {listAttributes, getAttribute, setAttribute} = ((xattr as {default?: unknown}).default ?? xattr) as {
    getAttribute(file: string, name: string): Promise<Buffer | null>
    listAttributes(file: string): Promise<string[]>
    setAttribute(file: string, name: string, value: Buffer): Promise<void>
  }
  for (const name of await listAttributes(source).catch(() => [] as string[])) {
    if (!name.startsWith('user.') && !name.startsWith('security.')) continue
    const value = await getAttribute(source, name).catch(() => null)
    if (value !== null) await setAttribute(to, name, value)
  }
}
