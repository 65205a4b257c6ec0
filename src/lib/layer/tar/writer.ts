/**
 * Writes a wafer's data as a reproducible layer tar: the pack half of the layer format. What each
 * overlayfs marker becomes is decided in whiteouts.ts (names) and xattrs.ts (attributes); this
 * file only walks and encodes.
 */
import type {BigIntStats} from 'node:fs'
import {closeSync, constants, fstatSync, lstatSync, openSync, readSync, readdirSync, readlinkSync} from 'node:fs'
import type {Writable} from 'node:stream'

import {WafersError} from '../../errors.js'
import {loadXattr} from '../../host/xattr.js'
import {OPAQUE_WHITEOUT, WHITEOUT_PREFIX, isOpaqueValue, isWhiteout, major, minor} from '../whiteouts.js'
import {packedAttribute} from '../xattrs.js'
import {BLOCK, type EntryHeader, encodeHeader, padded} from './header.js'

const SLASH = Buffer.from('/')
const WHITEOUT = Buffer.from(WHITEOUT_PREFIX)
const OPAQUE = Buffer.from(OPAQUE_WHITEOUT)
/**
 * Headers and file contents are gathered into buffers of this size, file data read straight into
 * them: one hash update and one write to the compressor per batch, not one per entry.
 */
const BATCH = 1024 * 1024
/**
 * Batches written to the compressor and not yet taken by it before the walk waits. The walk is
 * synchronous between batches, and only a turn of the event loop moves queued bytes into the
 * pipe: the walk yields after each batch, and this many in flight keep the compressor busy meanwhile.
 */
const IN_FLIGHT = 8

/** One directory entry, looked at before its directory's entries are sorted and written. */
interface Child {
  /** The name on disk. */
  name: Buffer
  /** The name in the tar (`.wh.NAME` for a whiteout). */
  tarName: Buffer
  stat: BigIntStats
  whiteout: boolean
}

/** What the pack makes of a file's attributes: the ones the layer carries, and its opaque mark. */
interface Attributes {
  opaque: boolean
  xattrs: [string, Buffer][]
}

/**
 * Writes the files under `data` to `sink` as a tar, the same bytes for the same content: entries
 * depth first, each directory's entries sorted bytewise by their tar name (an opaque directory's
 * `.wh..wh..opq` first), numeric owners without names, mode with setuid/setgid/sticky, mtime to
 * the nearest microsecond (sub-second through pax, as exact decimals), no atime or ctime, xattrs
 * as pax SCHILY.xattr.* sorted by the name they are packed as (xattrs.ts packedAttribute), hard
 * links to the first path in that order. Overlayfs whiteouts become `.wh.NAME` entries and opaque
 * directories (either attribute form) get their `.wh..wh..opq`. A socket, a name starting with
 * `.wh.`, a redirect or a metacopy is refused with a WafersError naming the file. Every byte
 * written also goes into `hash`, when one is given.
 */
export async function writeLayerTar(
  data: string,
  sink: Writable,
  options: {
    /** Takes every byte written, in order, when given. */
    hash?: {update(part: Buffer): unknown}
    onBytes?: (n: number) => void
    /** How messages name `data` (which may be a /proc/PID/fd path). */
    shownAs?: string
    signal?: AbortSignal
    /** Settles when the compressor exits: a walk waiting for it to drain stops then. */
    stopped: Promise<unknown>
  },
): Promise<void> {
  const {hash, signal} = options
  const xattr = await loadXattr()
  const shownRoot = Buffer.from(options.shownAs ?? data)
  const shown = (file: Buffer) => Buffer.concat([shownRoot, file.subarray(Buffer.byteLength(data))]).toString('utf8')
  const links = new Map<string, Buffer>()
  let read = 0

  let batch = Buffer.allocUnsafeSlow(BATCH)
  let used = 0
  let inFlight = 0
  let shipped = false
  let taken: (() => void) | undefined
  const ship = (): void => {
    if (used === 0) return
    const part = batch.subarray(0, used)
    batch = Buffer.allocUnsafeSlow(BATCH)
    used = 0
    hash?.update(part)
    inFlight++
    shipped = true
    sink.write(part, () => {
      inFlight--
      taken?.()
    })
  }

  const stopped = options.stopped.then(() => {
    throw new WafersError('the compressor stopped early.')
  })
  stopped.catch(() => {}) // raced below only while waiting; never left unhandled
  /**
   * After a batch went out: lets the event loop move it into the pipe, and waits while more than
   * IN_FLIGHT batches are queued. Costs nothing when no batch went out since the last call.
   */
  const settle = async (): Promise<void> => {
    if (!shipped) return
    shipped = false
    // A destroyed sink takes nothing more: the compressor's exit is what ends the wait then.
    if (sink.destroyed) await stopped
    // eslint-disable-next-line no-unmodified-loop-condition -- the sink's callbacks lower inFlight while this waits
    while (inFlight > IN_FLIGHT) {
      await Promise.race([
        new Promise<void>((resolve) => {
          taken = resolve
        }),
        stopped,
      ])
    }

    await new Promise(setImmediate)
  }

  const put = (bytes: Buffer): void => {
    let offset = 0
    while (offset < bytes.length) {
      if (used === BATCH) ship()
      const n = bytes.copy(batch, used, offset)
      used += n
      offset += n
    }
  }

  const attributes = (file: Buffer): Attributes => {
    const path = utf8Path(file, shown)
    const xattrs: [string, Buffer][] = []
    let opaque = false
    for (const name of xattr.listAttributesSync(path)) {
      const packed = packedAttribute(name)
      if (packed.action === 'opaque') {
        opaque ||= isOpaqueValue(xattr.getAttributeSync(path, name))
      } else if (packed.action === 'refuse') {
        throw new WafersError(
          `${shown(file)} carries ${name}: overlayfs wrote it with redirect_dir or metacopy, whose changes a layer tar cannot hold.`,
          {
            suggestions: [
              'Make a full copy of it in a stack mounted without redirect_dir and metacopy (cp -a, then rename the copy over it), and push again.',
            ],
          },
        )
      } else if (packed.action === 'keep') {
        const value = xattr.getAttributeSync(path, name)
        if (value !== null) xattrs.push([packed.name, value])
      }
    }

    xattrs.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return {opaque, xattrs}
  }

  /** Copies the content of regular file `file` (whose lstat was `stat`) into the tar, padded. */
  const writeContent = async (file: Buffer, stat: BigIntStats): Promise<void> => {
    const size = Number(stat.size)
    const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    try {
      const now = fstatSync(fd, {bigint: true})
      if (!now.isFile() || now.ino !== stat.ino || now.size !== stat.size) changed(shown(file))
      let left = size
      while (left > 0) {
        if (used === BATCH) {
          ship()
          await settle()
        }

        const bytesRead = readSync(fd, batch, used, Math.min(left, BATCH - used), size - left)
        if (bytesRead === 0) changed(shown(file))
        used += bytesRead
        left -= bytesRead
        read += bytesRead
      }
    } finally {
      closeSync(fd)
    }

    put(zeros(padded(size) - size))
    options.onBytes?.(read)
  }

  /** Writes the entries in directory `dir` (`rel` in the tar; undefined for the root). */
  const walk = async (dir: Buffer, rel: Buffer | undefined): Promise<void> => {
    if (signal?.aborted) throw new WafersError('packing was interrupted.')
    const children: Child[] = []
    for (const name of readdirSync(dir, {encoding: 'buffer'})) {
      const file = Buffer.concat([dir, SLASH, name])
      const stat = lstatSync(file, {bigint: true})
      if (stat.isSocket()) {
        throw new WafersError(`${shown(file)} is a socket, which a layer tar cannot carry.`, {
          suggestions: [
            'Remove it from the wafer and push again: the program that listens on it makes it anew when it starts.',
          ],
        })
      }

      if (name.subarray(0, WHITEOUT.length).equals(WHITEOUT)) {
        throw new WafersError(
          `${shown(file)} is named like an OCI whiteout (.wh.*), which no layer can carry as a file.`,
        )
      }

      const whiteout = isWhiteout(stat)
      children.push({name, stat, tarName: whiteout ? Buffer.concat([WHITEOUT, name]) : name, whiteout})
    }

    children.sort((a, b) => Buffer.compare(a.tarName, b.tarName))
    for (const child of children) {
      const file = Buffer.concat([dir, SLASH, child.name])
      const name = rel ? Buffer.concat([rel, SLASH, child.tarName]) : child.tarName
      const {stat} = child
      const common = commonFields(stat)
      if (child.whiteout) {
        put(encodeHeader({...common, name, size: 0, typeflag: '0'}))
      } else if (stat.isDirectory()) {
        const {opaque, xattrs} = attributes(file)
        put(encodeHeader({...common, name: Buffer.concat([name, SLASH]), size: 0, typeflag: '5', xattrs}))
        if (opaque) put(opaqueMarker(common, Buffer.concat([name, SLASH, OPAQUE])))
        await settle()
        await walk(file, name)
      } else if (stat.isSymbolicLink()) {
        put(encodeHeader({...common, linkname: readlinkSync(file, {encoding: 'buffer'}), name, size: 0, typeflag: '2'}))
      } else {
        const key = `${stat.dev}:${stat.ino}`
        const first = stat.nlink > 1n ? links.get(key) : undefined
        if (first) {
          put(encodeHeader({...common, linkname: first, name, size: 0, typeflag: '1'}))
          continue
        }

        if (stat.nlink > 1n) links.set(key, name)
        const {xattrs} = attributes(file)
        const devices = {devmajor: major(stat.rdev), devminor: minor(stat.rdev)}
        if (stat.isFile()) {
          put(encodeHeader({...common, name, size: Number(stat.size), typeflag: '0', xattrs}))
          await writeContent(file, stat)
        } else if (stat.isCharacterDevice()) {
          put(encodeHeader({...common, ...devices, name, size: 0, typeflag: '3', xattrs}))
        } else if (stat.isBlockDevice()) {
          put(encodeHeader({...common, ...devices, name, size: 0, typeflag: '4', xattrs}))
        } else if (stat.isFIFO()) {
          put(encodeHeader({...common, name, size: 0, typeflag: '6', xattrs}))
        }
      }

      await settle()
    }
  }

  // "DATA/." is the directory itself even when DATA is a /proc/PID/fd link to it.
  const self = Buffer.from(`${data}/.`)
  // The root as "./", first: its mode, owner, mtime and attributes come back when it is pulled.
  const rootStat = lstatSync(self, {bigint: true})
  const root = commonFields(rootStat)
  const {opaque, xattrs} = attributes(self)
  put(encodeHeader({...root, name: Buffer.from('./'), size: 0, typeflag: '5', xattrs}))
  // The wafer itself is opaque (it came from a layer that said so): say so first, as the layer did.
  if (opaque) put(opaqueMarker(root, OPAQUE))
  await walk(Buffer.from(data), undefined)
  put(zeros(2 * BLOCK))
  ship()
}

/** The header fields every entry takes from its lstat: owner, mode, and the time packed. */
function commonFields(stat: BigIntStats): Pick<EntryHeader, 'gid' | 'mode' | 'mtime' | 'mtimeNs' | 'uid'> {
  return {gid: Number(stat.gid), mode: Number(stat.mode), ...packedTime(stat.mtimeNs), uid: Number(stat.uid)}
}

/**
 * A modification time in nanoseconds as the tar carries it: rounded to the nearest microsecond,
 * as whole seconds (floored) and the nanoseconds past them. Microseconds are what an unpack can
 * set exactly again (Node's utimes takes a double), so a time that went through a pull and a push
 * comes back to the same value on every later push.
 */
export function packedTime(ns: bigint): {mtime: number; mtimeNs: number} {
  const micro = floorDiv(ns + 500n, 1000n)
  const seconds = floorDiv(micro, 1_000_000n)
  return {mtime: Number(seconds), mtimeNs: Number(micro - seconds * 1_000_000n) * 1000}
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b
  return a % b !== 0n && a < 0n !== b < 0n ? q - 1n : q
}

/** The `.wh..wh..opq` entry of an opaque directory, with the directory's owner, permissions and time. */
function opaqueMarker(common: ReturnType<typeof commonFields>, name: Buffer): Buffer {
  return encodeHeader({...common, mode: common.mode & 0o777, name, size: 0, typeflag: '0'})
}

const ZEROS = Buffer.alloc(2 * BLOCK)
function zeros(n: number): Buffer {
  return ZEROS.subarray(0, n)
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
