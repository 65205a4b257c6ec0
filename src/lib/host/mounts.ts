import {promises as fs} from 'node:fs'
import path from 'node:path'

/** One line of /proc/self/mountinfo, with its escapes decoded. */
export interface MountEntry {
  fstype: string
  /** Device number "major:minor" of the mounted file system. */
  majorMinor: string
  /** Where it is mounted. */
  mountpoint: string
  /** The directory of its file system that is mounted there (a bind mount's source). */
  root: string
  source: string
  superOptions: string
}

/** The layers of an overlay mount, as absolute paths. */
export interface OverlayLayers {
  lowers: string[]
  upper?: string
}

/** Reads the live mount table of this process's mount namespace. */
export async function readMountTable(file = '/proc/self/mountinfo'): Promise<MountEntry[]> {
  return parseMountInfo(await fs.readFile(file, 'utf8'))
}

/** Parses mountinfo text (see proc(5)). */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    const fields = line.split(' ')
    const separator = fields.indexOf('-', 6)
    if (separator === -1) continue
    entries.push({
      fstype: unescape(fields[separator + 1]),
      majorMinor: fields[2],
      mountpoint: unescape(fields[4]),
      root: unescape(fields[3]),
      source: unescape(fields[separator + 2]),
      superOptions: fields[separator + 3] ?? '',
    })
  }

  return entries
}

/** The mounts at `dir` or anywhere under it, deepest first (the order to unmount them in). */
export function mountsUnder(table: MountEntry[], dir: string): MountEntry[] {
  return table
    .filter((entry) => entry.mountpoint === dir || entry.mountpoint.startsWith(dir + '/'))
    .sort((a, b) => b.mountpoint.length - a.mountpoint.length)
}

/** The mount visible at `mountpoint` (the last one mounted there), if any. */
export function mountAt(table: MountEntry[], mountpoint: string): MountEntry | undefined {
  return table.findLast((entry) => entry.mountpoint === mountpoint)
}

/**
 * The upper and lower directories of an overlay mount as real paths (short links followed).
 * Relative paths are resolved against the mount's source when that is an absolute directory, as
 * wafers mounts (see overlay.ts).
 */
export async function overlayLayers(entry: MountEntry): Promise<OverlayLayers> {
  const layers = overlayOptionLayers(entry)
  const real = (dir: string) => fs.realpath(dir).catch(() => dir)
  return {
    lowers: await Promise.all(layers.lowers.map((dir) => real(dir))),
    ...(layers.upper === undefined ? {} : {upper: await real(layers.upper)}),
  }
}

/** The upper and lower directories of an overlay mount as its options name them, made absolute. */
export function overlayOptionLayers(entry: MountEntry): OverlayLayers {
  const base = path.isAbsolute(entry.source) ? entry.source : '/'
  const layers: OverlayLayers = {lowers: []}
  for (const option of entry.superOptions.split(',')) {
    const [key, ...rest] = option.split('=')
    const value = unescape(rest.join('='))
    if (key === 'upperdir') layers.upper = path.resolve(base, value)
    if (key === 'lowerdir') {
      layers.lowers = splitLowerDirs(value)
        .filter((dir) => dir !== '')
        .map((dir) => path.resolve(base, dir))
    }
  }

  return layers
}

/** Splits a lowerdir value on unescaped colons. */
function splitLowerDirs(value: string): string[] {
  return value.split(/(?<!\\):/).map((dir) => dir.replaceAll('\\:', ':'))
}

/** Decodes the octal escapes (\040 for a space, ...) the kernel writes in mountinfo. */
function unescape(field: string): string {
  return field.replaceAll(/\\([0-7]{3})/g, (_, octal: string) => String.fromCodePoint(Number.parseInt(octal, 8)))
}
