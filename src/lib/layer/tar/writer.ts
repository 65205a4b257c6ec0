import type {BigIntStats} from 'node:fs'
import {constants, promises as fs} from 'node:fs'
import type {Hash} from 'node:crypto'
import {once} from 'node:events'
import type {Writable} from 'node:stream'

import {WafersError} from '../../errors.js'
import {BLOCK, encodeHeader, padded} from './header.js'

const OVERLAY_XATTR = 'trusted.overlay.'
const SLASH = Buffer.from('/')
const WHITEOUT = Buffer.from('.wh.')
const OPAQUE = Buffer.from('.wh..wh..opq')
/** Files up to this size are read in one go; larger ones in chunks of it. */
const CHUNK = 1024 * 1024

export interface XattrBinding {
  getAttribute(file: string, name: string): Promise<Buffer | null>
  listAttributes(file: string): Promise<string[]>
}

/** One directory entry, looked at before its directory's entries are sorted and written. */
interface Child {
  /** The name on disk. */
  name: Buffer
  /** The name in the tar (`.wh.NAME` for a whiteout). */
  tarName: Buffer
  stat: BigIntStats
  whiteout: boolean
}

/** True for what overlayfs writes as a whiteout: a character device 0/0. */
export function isWhiteoutStat(stat: {isCharacterDevice(): boolean; rdev: number | bigint}): boolean {
  return stat.isCharacterDevice() && Number(stat.rdev) === 0
}

/**
 * Writes the files under `data` to `sink` as a tar, the same bytes for the same content: entries
 * depth first, each directory's entries sorted bytewise by their tar name (an opaque directory's
 * `.wh..wh..opq` first), numeric owners without names, mode with setuid/setgid/sticky, mtime
 * (sub-second through pax), no atime or ctime, xattrs as pax SCHILY.xattr.* sorted by name
 * (trusted.overlay.* left out), hard links to the first path in that order. Overlayfs whiteouts
 * become `.wh.NAME` entries and opaque directories get their `.wh..wh..opq`. Sockets are left
 * out, as GNU tar does. Every byte written also goes into `hash`.
 */
export async function writeLayerTar(
  data: string,
  sink: Writable,
  options: {
    hash: Hash
    onBytes?: (n: number) => void
    /** How messages name `data` (which may be a /proc/PID/fd path). */
    shownAs?: string
    signal?: AbortSignal
    stopped: Promise<unknown>
    xattr: XattrBinding
  },
): Promise<void> {
  const {hash, signal, xattr} = options
  const shownRoot = Buffer.from(options.shownAs ?? data)
  const shown = (file: Buffer) => Buffer.concat([shownRoot, file.subarray(Buffer.byteLength(data))]).toString('utf8')
  const links = new Map<string, Buffer>()
  let read = 0
  let queued: Buffer[] = []
  let queuedBytes = 0

  const flush = async (): Promise<void> => {
    if (queued.length === 0) return
    const parts = queued
    queued = []
    queuedBytes = 0
    sink.cork()
    let room = true
    for (const part of parts) {
      hash.update(part)
      room = sink.write(part)
    }

    sink.uncork()
    if (!room) {
      await Promise.race([
        once(sink, 'drain'),
        options.stopped.then(() => {
          throw new WafersError('the compressor stopped early.')
        }),
      ])
    }
  }

  const emit = async (part: Buffer): Promise<void> => {
    queued.push(part)
    queuedBytes += part.length
    if (queuedBytes >= CHUNK) await flush()
  }

  const attributes = async (file: Buffer): Promise<[string, Buffer][]> => {
    const path = utf8Path(file, shown)
    const all = await xattr.listAttributes(path)
    for (const name of ['trusted.overlay.redirect', 'trusted.overlay.metacopy']) {
      if (all.includes(name)) {
        throw new WafersError(
          `${shown(file)} carries ${name}: overlayfs wrote it with redirect_dir or metacopy, whose changes a layer tar cannot hold.`,
        )
      }
    }

    const names = all.filter((name) => !name.startsWith(OVERLAY_XATTR)).sort()
    const pairs: [string, Buffer][] = []
    for (const name of names) {
      // eslint-disable-next-line no-await-in-loop
      const value = await xattr.getAttribute(path, name)
      if (value !== null) pairs.push([name, value])
    }

    return pairs
  }

  const writeFile = async (file: Buffer, stat: BigIntStats): Promise<void> => {
    const size = Number(stat.size)
    const handle = await fs.open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    try {
      const now = await handle.stat({bigint: true})
      if (!now.isFile() || now.ino !== stat.ino || now.size !== stat.size) changed(shown(file))
      let left = size
      while (left > 0) {
        const buffer = Buffer.allocUnsafe(Math.min(left, CHUNK))
        // eslint-disable-next-line no-await-in-loop
        const {bytesRead} = await handle.read(buffer, 0, buffer.length, size - left)
        if (bytesRead === 0) changed(shown(file))
        left -= bytesRead
        read += bytesRead
        // eslint-disable-next-line no-await-in-loop
        await emit(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead))
      }
    } finally {
      await handle.close()
    }

    if (size % BLOCK !== 0) await emit(Buffer.alloc(padded(size) - size))
    options.onBytes?.(read)
  }

  const walk = async (dir: Buffer, rel: Buffer | undefined): Promise<void> => {
    if (signal?.aborted) throw new WafersError('packing was interrupted.')
    const names = (await fs.readdir(dir, {encoding: 'buffer'})) as Buffer[]
    const children: Child[] = []
    for (const name of names) {
      const file = Buffer.concat([dir, SLASH, name])
      // eslint-disable-next-line no-await-in-loop
      const stat = await fs.lstat(file, {bigint: true})
      if (stat.isSocket()) continue
      const whiteout = isWhiteoutStat(stat)
      if (name.subarray(0, WHITEOUT.length).equals(WHITEOUT)) {
        throw new WafersError(
          `${shown(Buffer.concat([dir, SLASH, name]))} is named like an OCI whiteout (.wh.*), which no layer can carry as a file.`,
        )
      }

      children.push({name, stat, tarName: whiteout ? Buffer.concat([WHITEOUT, name]) : name, whiteout})
    }

    children.sort((a, b) => Buffer.compare(a.tarName, b.tarName))
    for (const child of children) {
      const file = Buffer.concat([dir, SLASH, child.name])
      const name = rel ? Buffer.concat([rel, SLASH, child.tarName]) : child.tarName
      const {stat} = child
      const common = {
        gid: Number(stat.gid),
        mode: Number(stat.mode),
        mtime: Number(stat.mtimeNs / 1_000_000_000n),
        mtimeNs: Number(stat.mtimeNs % 1_000_000_000n),
        uid: Number(stat.uid),
      }
      if (child.whiteout) {
        // eslint-disable-next-line no-await-in-loop
        await emit(encodeHeader({...common, name, size: 0, typeflag: '0'}))
        continue
      }

      // eslint-disable-next-line no-await-in-loop
      const xattrs = stat.isSymbolicLink() ? [] : await attributes(file)
      if (stat.isDirectory()) {
        // eslint-disable-next-line no-await-in-loop
        const opaque = (await xattr.getAttribute(utf8Path(file, shown), 'trusted.overlay.opaque'))?.toString() === 'y'
        // eslint-disable-next-line no-await-in-loop
        await emit(encodeHeader({...common, name: Buffer.concat([name, SLASH]), size: 0, typeflag: '5', xattrs}))
        if (opaque) {
          const marker = Buffer.concat([name, SLASH, OPAQUE])
          // eslint-disable-next-line no-await-in-loop
          await emit(encodeHeader({...common, mode: common.mode & 0o777, name: marker, size: 0, typeflag: '0'}))
        }

        // eslint-disable-next-line no-await-in-loop
        await walk(file, name)
      } else if (stat.isSymbolicLink()) {
        // eslint-disable-next-line no-await-in-loop
        const target = (await fs.readlink(file, {encoding: 'buffer'})) as Buffer
        // eslint-disable-next-line no-await-in-loop
        await emit(encodeHeader({...common, linkname: target, name, size: 0, typeflag: '2'}))
      } else {
        const key = `${stat.dev}:${stat.ino}`
        const first = stat.nlink > 1n ? links.get(key) : undefined
        if (first) {
          // eslint-disable-next-line no-await-in-loop
          await emit(encodeHeader({...common, linkname: first, name, size: 0, typeflag: '1'}))
          continue
        }

        if (stat.nlink > 1n) links.set(key, name)
        const devices = {devmajor: major(stat.rdev), devminor: minor(stat.rdev)}
        if (stat.isFile()) {
          // eslint-disable-next-line no-await-in-loop
          await emit(encodeHeader({...common, name, size: Number(stat.size), typeflag: '0', xattrs}))
          // eslint-disable-next-line no-await-in-loop
          await writeFile(file, stat)
        } else if (stat.isCharacterDevice()) {
          // eslint-disable-next-line no-await-in-loop
          await emit(encodeHeader({...common, ...devices, name, size: 0, typeflag: '3', xattrs}))
        } else if (stat.isBlockDevice()) {
          // eslint-disable-next-line no-await-in-loop
          await emit(encodeHeader({...common, ...devices, name, size: 0, typeflag: '4', xattrs}))
        } else if (stat.isFIFO()) {
          // eslint-disable-next-line no-await-in-loop
          await emit(encodeHeader({...common, name, size: 0, typeflag: '6', xattrs}))
        }
      }
    }
  }

  const root = Buffer.from(data)
  // "DATA/." is the directory itself even when DATA is a /proc/PID/fd link to it.
  const self = Buffer.from(`${data}/.`)
  // The root as "./", first: its mode, owner, mtime and attributes come back when it is pulled.
  const rootStat = await fs.lstat(self, {bigint: true})
  await emit(
    encodeHeader({
      gid: Number(rootStat.gid),
      mode: Number(rootStat.mode),
      mtime: Number(rootStat.mtimeNs / 1_000_000_000n),
      mtimeNs: Number(rootStat.mtimeNs % 1_000_000_000n),
      name: Buffer.from('./'),
      size: 0,
      typeflag: '5',
      uid: Number(rootStat.uid),
      xattrs: await attributes(self),
    }),
  )
  if ((await xattr.getAttribute(utf8Path(self, shown), 'trusted.overlay.opaque'))?.toString() === 'y') {
    // The wafer itself is opaque (it came from a layer that said so): say so first, as the layer did.
    const stat = await fs.lstat(self, {bigint: true})
    const mtime = Number(stat.mtimeNs / 1_000_000_000n)
    await emit(
      encodeHeader({
        gid: Number(stat.gid),
        mode: Number(stat.mode) & 0o777,
        mtime,
        name: OPAQUE,
        size: 0,
        typeflag: '0',
        uid: Number(stat.uid),
      }),
    )
  }

  await walk(root, undefined)
  await emit(Buffer.alloc(2 * BLOCK))
  await flush()
}

function changed(file: string): never {
  throw new WafersError(`${file} changed while it was being packed; pack the wafer when nothing writes to it.`)
}

/** The path as the xattr binding takes it: a string, so the name must be UTF-8. */
function utf8Path(file: Buffer, shown: (file: Buffer) => string): string {
  const text = file.toString('utf8')
  if (!Buffer.from(text).equals(file)) {
    throw new WafersError(
      `cannot read the extended attributes of ${JSON.stringify(shown(file))}: its name is not UTF-8.`,
    )
  }

  return text
}

/** The major number of a Linux device number (glibc's gnu_dev_major). */
export function major(rdev: bigint | number): number {
  const dev = BigInt(rdev)
  return Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & 0xfffff000n))
}

/** The minor number of a Linux device number (glibc's gnu_dev_minor). */
export function minor(rdev: bigint | number): number {
  const dev = BigInt(rdev)
  return Number((dev & 0xffn) | ((dev >> 12n) & 0xffffff00n))
}
