import {createHash} from 'node:crypto'
import {createReadStream, promises as fs} from 'node:fs'
import type {Stats} from 'node:fs'
import path from 'node:path'

export interface TreeOptions {
  /** Paths (relative to the tree, no leading slash) left out with everything under them. */
  ignore?: string[]
  /** mtimes to the microsecond (the nanoseconds rounded half up) instead of whole seconds. */
  microseconds?: boolean
  /** Also list trusted.overlay.* xattrs (left out by default: overlayfs bookkeeping). */
  overlayXattrs?: boolean
}

/**
 * Every entry under `dir`, one line each, sorted bytewise, to compare trees file for file: path,
 * type, mode (setuid too), uid:gid, then by type the size and sha256 of a file's content, a
 * symlink's target or a device's major:minor, the xattrs (trusted.overlay.* only when asked),
 * the mtime to the second (or the microsecond, when asked; symlinks too) and, for files linked more
 * than once in the tree, the first path of their hard-link group. `dir` itself is not listed.
 */
export async function treeListing(dir: string, options: TreeOptions = {}): Promise<string[]> {
  const xattr = await import('@napi-rs/xattr')
  const ignore = new Set(options.ignore ?? [])
  const found: {rel: string; stat: Stats}[] = []

  async function walk(current: string, rel: string): Promise<void> {
    const names = (await fs.readdir(current)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
    for (const name of names) {
      const relName = rel === '' ? name : `${rel}/${name}`
      if (ignore.has(relName)) continue
      const file = path.join(current, name)
      const stat = await fs.lstat(file)
      found.push({rel: relName, stat})
      if (stat.isDirectory()) await walk(file, relName)
    }
  }

  await walk(dir, '')
  const groups = new Map<string, string[]>()
  for (const {rel, stat} of found) {
    if (stat.isDirectory() || stat.nlink < 2) continue
    const key = `${stat.dev}:${stat.ino}`
    groups.set(key, [...(groups.get(key) ?? []), rel])
  }

  const lines: string[] = []
  for (const {rel, stat} of found) {
    const file = path.join(dir, rel)
    const mode = (stat.mode & 0o7777).toString(8).padStart(4, '0')
    let line = `${rel} ${typeOf(stat)} ${mode} ${stat.uid}:${stat.gid}`
    if (stat.isFile()) line += ` ${stat.size}B sha256:${await sha256File(file)}`
    if (stat.isSymbolicLink()) line += ` -> ${await fs.readlink(file)}`
    if (stat.isCharacterDevice() || stat.isBlockDevice()) line += ` ${major(stat.rdev)}:${minor(stat.rdev)}`
    const names = (await xattr.listAttributes(file))
      .filter((name) => options.overlayXattrs || !name.startsWith('trusted.overlay.'))
      .sort()
    for (const name of names) {
      const value = await xattr.getAttribute(file, name)
      line += ` ${name}=${value?.toString('base64')}`
    }

    line += ` mtime=${options.microseconds ? await microseconds(file) : Math.floor(stat.mtimeMs / 1000)}`
    const group = groups.get(`${stat.dev}:${stat.ino}`)
    if (group && group.length > 1) line += ` links=${group[0]}`
    lines.push(line)
  }

  return lines
}

/** The mtime of `file` as SECONDS.UUUUUU, rounded half up from the nanoseconds lstat gives. */
async function microseconds(file: string): Promise<string> {
  const us = ((await fs.lstat(file, {bigint: true})).mtimeNs + 500n) / 1000n
  return `${us / 1_000_000n}.${(us % 1_000_000n).toString().padStart(6, '0')}`
}

function typeOf(stat: Stats): string {
  if (stat.isDirectory()) return 'd'
  if (stat.isFile()) return 'f'
  if (stat.isSymbolicLink()) return 'l'
  if (stat.isCharacterDevice()) return 'c'
  if (stat.isBlockDevice()) return 'b'
  if (stat.isFIFO()) return 'p'
  return 's'
}

function major(rdev: number): number {
  return ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff)
}

function minor(rdev: number): number {
  return (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}
