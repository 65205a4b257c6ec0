import {type Stats, promises as fs, lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {readStoreFile} from '../host/files.js'
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
    // eslint-disable-next-line no-await-in-loop
    await fs.mkdir(dir, {mode: 0o755})
    // eslint-disable-next-line no-await-in-loop
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
 * Unpacks tarball `file` into the tree at `root` under directory `dest` (a container path), as ADD
 * does. GNU tar (which takes gzip, bzip2, xz and zstd by itself) unpacks into `scratch`, an empty
 * directory of wafers' own outside the image, where its refusal of `../` and absolute names and of
 * writing through links applies; the result is then merged into the image resolving every path
 * within `root`, so no symbolic link of the image leads a write out of it. Owners, modes, times
 * and xattrs are kept; existing directories keep theirs, as `tar --no-overwrite-dir` does.
 */
export async function unpackArchive(
  file: string,
  root: string,
  dest: string,
  scratch: string,
  own: CopyOwnership,
): Promise<void> {
  await fs.mkdir(scratch, {mode: 0o700})
  try {
    const {execa} = await import('execa')
    const result = await execa(
      'tar',
      [
        '--extract',
        `--file=${file}`,
        `--directory=${scratch}`,
        '--same-owner',
        '--preserve-permissions',
        '--xattrs',
        '--xattrs-include=*',
        '--no-overwrite-dir',
      ],
      {reject: false, stdin: 'ignore'},
    )
    if (result.exitCode !== 0) {
      const said = String(result.stderr ?? '')
        .split('\n')
        .map((line) => line.replace(/^tar: /, '').trim())
        .filter((line) => line !== '' && !/previous errors|Error is not recoverable|^Removing leading/.test(line))
      throw new WafersError(
        `${path.basename(file)} cannot be unpacked: ${said.slice(0, 3).join('; ') || `tar exited with code ${result.exitCode}`}.`,
      )
    }

    // As buildah does: the directories made above DEST take --chown, DEST itself stays root's.
    await mkdirIn(root, path.posix.dirname(dest.replace(/\/+$/, '') || '/'), own)
    const target = await mkdirIn(root, dest)
    await mergeTree(root, path.relative(root, target), scratch, '')
  } finally {
    await fs.rm(scratch, {force: true, recursive: true})
  }
}

/**
 * Moves what is under `from/rel` into `root` at container path `dir/rel`, resolving each
 * destination within `root` (the last component never followed): a directory merges into an
 * existing directory, anything else replaces what is there. Hard links among the unpacked files stay
 * hard links.
 */
async function mergeTree(root: string, dir: string, from: string, rel: string): Promise<void> {
  const links = new Map<string, string>()
  const xattr = await import('@napi-rs/xattr')
  const {listAttributes, getAttribute, setAttribute} = ((xattr as {default?: unknown}).default ?? xattr) as {
    getAttribute(file: string, name: string): Promise<Buffer | null>
    listAttributes(file: string): Promise<string[]>
    setAttribute(file: string, name: string, value: Buffer): Promise<void>
  }
  const copyAttributes = async (source: string, to: string) => {
    for (const name of await listAttributes(source).catch(() => [] as string[])) {
      // eslint-disable-next-line no-await-in-loop
      const value = await getAttribute(source, name).catch(() => null)
      // eslint-disable-next-line no-await-in-loop
      if (value !== null) await setAttribute(to, name, value)
    }
  }

  const dirs: Array<{source: string; stat: Stats; to: string}> = []
  const visit = async (sub: string): Promise<void> => {
    for (const name of (await fs.readdir(path.join(from, sub))).sort()) {
      const childRel = sub === '' ? name : `${sub}/${name}`
      const source = path.join(from, childRel)
      const stat = lstatSync(source)
      const to = resolveInRoot(root, path.join(dir, childRel), false)
      if (!isInside(root, to) || to === root) throw new WafersError(`${childRel} would land outside the new wafer.`)
      const there = statOrUndefined(to)
      if (stat.isDirectory()) {
        // An existing directory keeps its owner and mode; anything else (a link too) gives way.
        if (!there?.isDirectory()) {
          if (there) await fs.rm(to, {force: true})
          await fs.mkdir(to)
          await fs.lchown(to, stat.uid, stat.gid)
          await fs.chmod(to, stat.mode & 0o7777)
          await copyAttributes(source, to)
          dirs.push({source, stat, to})
        }

        await visit(childRel)
        continue
      }

      if (there?.isDirectory())
        throw new WafersError(`the archive's ${childRel} would replace a directory of the image.`)
      if (there) await fs.rm(to, {force: true})
      const inode = `${stat.dev}:${stat.ino}`
      const linked = stat.nlink > 1 ? links.get(inode) : undefined
      if (linked !== undefined) {
        await fs.link(linked, to)
        continue
      }

      if (stat.isSymbolicLink()) {
        await fs.symlink(await fs.readlink(source), to)
        await fs.lchown(to, stat.uid, stat.gid)
        await fs.lutimes(to, stat.atime, stat.mtime)
        continue
      }

      if (stat.isFile()) await fs.copyFile(source, to, 0)
      else {
        const {run} = await import('../host/run.js')
        await run('cp', ['--archive', '--no-target-directory', '--', source, to])
      }

      if (stat.nlink > 1) links.set(inode, to)
      await fs.lchown(to, stat.uid, stat.gid)
      await fs.chmod(to, stat.mode & 0o7777)
      await copyAttributes(source, to)
      await fs.utimes(to, stat.atime, stat.mtime)
    }
  }

  await visit(rel)
  // Directories last: writing into them changed their times.
  for (const {stat, to} of dirs.reverse()) await fs.utimes(to, stat.atime, stat.mtime)
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
    // eslint-disable-next-line no-await-in-loop
    const value = await getAttribute(source, name).catch(() => null)
    // eslint-disable-next-line no-await-in-loop
    if (value !== null) await setAttribute(to, name, value)
  }
}
