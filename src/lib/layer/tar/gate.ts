import type {Hash} from 'node:crypto'
import {once} from 'node:events'
import type {Writable} from 'node:stream'

import {WafersError} from '../../errors.js'
import {BLOCK, RawHeader, encodeHeader, isZeroBlock, padded, parseHeader, parsePax} from './header.js'

/** What the gate saw in a layer, for the steps after GNU tar has extracted it. */
export interface GateResult {
  /** Entries of the layer (pax and long-name headers not counted). */
  entries: number
  /** Directories marked opaque by a `.wh..wh..opq` entry, relative to the wafer's data ('' for its root). */
  opaque: Buffer[]
  /**
   * Every directory the layer lists and that no later entry replaced, relative to the wafer's data
   * ('' for its root), with the mode and mtime (seconds, fractions from a pax record) of its last
   * entry: applied after extraction, since GNU tar's own --delay-directory-restore takes time
   * quadratic in the number of directories.
   */
  directories: Map<string, {mode: number; mtime: number}>
}

const WHITEOUT = Buffer.from('.wh.')
const OPAQUE = Buffer.from('.wh..wh..opq')
const META_PREFIX = Buffer.from('.wh..wh.')
/** Entry types GNU tar extracts that a layer may hold: files, links, devices, directories, FIFOs. */
const ENTRY_TYPES = new Set(['0', '\0', '7', '1', '2', '3', '4', '5', '6'])
const HEADER_ONLY = new Set(['1', '2', '3', '4', '5', '6'])
const MAX_META = 1024 * 1024
/**
 * The most memory the gate's tables of names (directories, symlinks, directory modes) may take,
 * counting each name's bytes plus 100 for its record: about a million directories or symlinks of
 * ordinary names. A layer that needs more is refused rather than let exhaust memory.
 */
export const MAX_TRACKED_BYTES = 256 * 1024 * 1024
/** Names in refusals are cut to this many characters (a name may be a megabyte long). */
const SHOWN_NAME = 200

type State =
  | {kind: 'data'; remaining: number; forward: boolean}
  | {kind: 'end'}
  | {kind: 'header'}
  | {kind: 'meta'; parts: Buffer[]; remaining: number; size: number; typeflag: string}

/**
 * Reads an uncompressed layer tar from `source` and writes it to `sink` (GNU tar extracting into
 * the wafer), entry by entry, only after checking each one: a name or hard link target that is
 * absolute, holds `..`, or goes through a symlink an earlier entry made is refused before GNU tar
 * sees it, as is anything GNU tar and this reader could read differently (bad checksums, data on
 * a link, sparse or unknown entries, pax records that rename). OCI whiteouts are rewritten on the
 * way: `.wh.NAME` becomes the 0/0 character device NAME that overlayfs reads as a whiteout, and
 * `.wh..wh..opq` is dropped and its directory returned, to be marked opaque once it exists.
 * Every byte of `source` goes into `hash` (the diffID), also past the end of the archive.
 */
export async function gateLayer(
  source: AsyncIterable<Buffer>,
  sink: Writable,
  options: {hash?: Hash; layer: string; stopped: Promise<unknown>},
): Promise<GateResult> {
  const {hash, layer} = options
  const symlinks = new Set<string>()
  const dirs = new Set<string>([''])
  const directories = new Map<string, {mode: number; mtime: number}>()
  let tracked = 0
  const track = (key: string): void => {
    tracked += key.length + 100
    if (tracked > MAX_TRACKED_BYTES) {
      throw new WafersError(
        `${layer} was refused: it lists more directories and symlinks than wafers tracks (${MAX_TRACKED_BYTES / 1024 / 1024} MiB of names).`,
      )
    }
  }

  const opaque: Buffer[] = []
  let entries = 0
  let state: State = {kind: 'header'}
  let carry: Buffer | undefined
  /** Raw pax ('x') and GNU long name ('L', 'K') headers waiting for the entry they describe. */
  let pending: {content: Buffer; raw: Buffer; typeflag: string}[] = []
  let lastName = ''

  const refuse = (entry: string, why: string): never => {
    throw new WafersError(`${layer} was refused: its entry ${quote(entry)} ${why}.`)
  }

  const damaged = (why: string): never => {
    const after = lastName === '' ? 'at its start' : `after the entry ${quote(lastName)}`
    throw new WafersError(`${layer} is not a valid layer tar: ${why} ${after}.`)
  }

  /** The path components of a name, or a refusal when it would leave the wafer. */
  const components = (raw: Buffer, shown: string, what: string): string[] => {
    if (raw.includes(0)) refuse(shown, `has a NUL byte in its ${what}`)
    if (raw[0] === 0x2f) refuse(shown, `has an absolute ${what}, which would land outside the wafer`)
    const parts = raw
      .toString('latin1')
      .split('/')
      .filter((part) => part !== '' && part !== '.')
    if (parts.includes('..')) refuse(shown, `has ".." in its ${what}, which could land outside the wafer`)
    for (let i = 1; i < parts.length; i++) {
      const ancestor = parts.slice(0, i).join('/')
      if (symlinks.has(ancestor)) {
        const through = Buffer.from(ancestor, 'latin1').toString('utf8')
        refuse(
          shown,
          `${what === 'name' ? 'lands' : 'links'} through the symlink ${quote(through)} made by an earlier entry`,
        )
      }
    }

    return parts
  }

  const entry = (block: Buffer, header: RawHeader, out: Buffer[]): State => {
    const records = new Map<string, Buffer>()
    let longName: Buffer | undefined
    let longLink: Buffer | undefined
    for (const meta of pending) {
      if (meta.typeflag === 'L') longName = meta.content.subarray(0, indexOrLength(meta.content))
      else if (meta.typeflag === 'K') longLink = meta.content.subarray(0, indexOrLength(meta.content))
      else {
        const parsed = parsePax(meta.content)
        if (!parsed) damaged('a pax header is malformed')
        for (const [key, value] of parsed!) records.set(key, value)
      }
    }

    const name = records.get('path') ?? longName ?? header.name
    const linkname = records.get('linkpath') ?? longLink ?? header.linkname
    const shown = name.toString('utf8')
    let size = header.size
    if (records.has('size')) {
      const text = records.get('size')!.toString('latin1')
      if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(Number(text))) damaged('a pax size is not a number')
      size = Number(text)
    }

    lastName = shown
    let mtimeSeconds = header.mtime
    let mtimeNs = 0
    const paxTime = /^(-?[0-9]{1,15})(?:\.([0-9]+))?$/.exec(records.get('mtime')?.toString('latin1') ?? '')
    if (paxTime) {
      mtimeSeconds = Number(paxTime[1])
      mtimeNs = Number((paxTime[2] ?? '').padEnd(9, '0').slice(0, 9))
    }

    const mtime = mtimeSeconds + mtimeNs / 1e9

    const typeflag = header.typeflag
    if ([...records.keys()].some((key) => key.startsWith('GNU.sparse.')) || typeflag === 'S')
      refuse(shown, 'is a sparse file, which wafers does not unpack')
    if (!ENTRY_TYPES.has(typeflag))
      refuse(shown, `has the tar entry type ${JSON.stringify(typeflag)}, which a layer cannot hold`)
    if (HEADER_ONLY.has(typeflag) && size !== 0)
      refuse(shown, 'is a link, device or directory that claims to carry data')
    const trailingSlash = name.at(-1) === 0x2f
    if (trailingSlash && !HEADER_ONLY.has(typeflag) && size !== 0)
      refuse(shown, 'is a directory name that carries data')

    const parts = components(name, shown, 'name')
    const base = parts.at(-1) ?? ''
    const parent = parts.slice(0, -1)
    const key = parts.join('/')
    const baseBytes = Buffer.from(base, 'latin1')
    entries++
    const skip: State = {forward: false, kind: 'data', remaining: padded(size)}

    if (baseBytes.equals(OPAQUE)) {
      const dir = parent.join('/')
      opaque.push(Buffer.from(dir, 'latin1'))
      if (!dirs.has(dir)) {
        // The layer marks a directory opaque without listing it: make it, as a plain directory.
        out.push(
          encodeHeader({
            gid: 0,
            mode: 0o755,
            mtime: header.mtime,
            name: Buffer.from(dir + '/', 'latin1'),
            size: 0,
            typeflag: '5',
            uid: 0,
          }),
        )
        dirs.add(dir)
        track(dir)
      }

      return skip
    }

    if (baseBytes.subarray(0, META_PREFIX.length).equals(META_PREFIX)) return skip // aufs metadata (.wh..wh.plnk): dropped, as containerd does

    if (baseBytes.subarray(0, WHITEOUT.length).equals(WHITEOUT)) {
      const hidden = base.slice(WHITEOUT.length)
      if (hidden === '' || hidden === '.' || hidden === '..') refuse(shown, 'is a whiteout of no file')
      // The device keeps the name's spelling ("./a/.wh.b" -> "./a/b"), so GNU tar sees the same directory.
      let end = name.length
      while (end > 0 && name[end - 1] === 0x2f) end--
      const device = Buffer.concat([
        name.subarray(0, name.lastIndexOf(0x2f, end - 1) + 1),
        Buffer.from(hidden, 'latin1'),
      ])
      directories.delete([...parent, hidden].join('/'))
      // The whiteout file's owner, mode and time (to the nanosecond) go to the device, so a
      // pushed whiteout comes back as it was; overlayfs looks only at the 0/0 device number.
      out.push(
        encodeHeader({
          devmajor: 0,
          devminor: 0,
          gid: header.gid,
          mode: header.mode & 0o7777,
          mtime: mtimeSeconds,
          mtimeNs,
          name: device,
          size: 0,
          typeflag: '3',
          uid: header.uid,
        }),
      )
      return skip
    }

    if (key === '' && typeflag !== '5' && !(trailingSlash && size === 0))
      refuse(shown, 'would replace the wafer itself')
    const isDirectory = typeflag === '5' || trailingSlash
    if (!isDirectory) directories.delete(key)
    if (typeflag === '1') {
      const shownLink = linkname.toString('utf8')
      const target = components(linkname, shown, 'hard link target').join('/')
      if (target === '') refuse(shown, `is a hard link to ${quote(shownLink)}, the wafer's own directory`)
      if (symlinks.has(target)) {
        symlinks.add(key)
        track(key)
      }
    } else if (typeflag === '2') {
      symlinks.add(key)
      track(key)
    } else if (isDirectory) {
      if (!dirs.has(key)) {
        dirs.add(key)
        track(key)
      }

      if (!directories.has(key)) track(key)
      directories.set(key, {mode: header.mode & 0o7777, mtime})
    }

    for (const meta of pending) out.push(meta.raw)
    out.push(block)
    return {forward: true, kind: 'data', remaining: padded(size)}
  }

  const header = (block: Buffer, out: Buffer[]): State => {
    if (isZeroBlock(block)) {
      if (pending.length > 0) damaged('the archive ends between a header and its entry')
      // GNU tar also stops at the first zero block; anything after it is only hashed.
      out.push(Buffer.alloc(2 * BLOCK))
      return {kind: 'end'}
    }

    const parsed = parseHeader(block)
    if (!parsed) damaged('a header has a wrong checksum or a bad number')
    const typeflag = parsed!.typeflag
    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
      if (parsed!.size > MAX_META) damaged(`a ${typeflag} header is larger than 1 MiB`)
      if (pending.some((meta) => meta.typeflag === typeflag)) damaged(`two ${typeflag} headers describe one entry`)
      return {kind: 'meta', parts: [Buffer.from(block)], remaining: padded(parsed!.size), size: parsed!.size, typeflag}
    }

    const next = entry(block, parsed!, out)
    pending = []
    return next
  }

  const meta = (state: State & {kind: 'meta'}, out: Buffer[]): State => {
    const raw = Buffer.concat(state.parts)
    const content = raw.subarray(BLOCK, BLOCK + state.size)
    if (state.typeflag === 'g') {
      const records = parsePax(content)
      if (!records) damaged('a global pax header is malformed')
      if (
        ['path', 'linkpath', 'size'].some((key) => records!.has(key)) ||
        [...records!.keys()].some((key) => key.startsWith('GNU.'))
      )
        damaged('a global pax header renames or resizes entries')
      if (pending.length > 0) damaged('a global pax header sits between a header and its entry')
      out.push(raw)
    } else {
      pending.push({content, raw, typeflag: state.typeflag})
    }

    return {kind: 'header'}
  }

  for await (const chunk of source) {
    hash?.update(chunk)
    if (state.kind === 'end') continue
    const out: Buffer[] = []
    let offset = 0
    while (offset < chunk.length && state.kind !== 'end') {
      if (state.kind === 'data') {
        const n = Math.min(state.remaining, chunk.length - offset)
        if (state.forward) out.push(chunk.subarray(offset, offset + n))
        offset += n
        state.remaining -= n
        if (state.remaining === 0) state = {kind: 'header'}
      } else if (state.kind === 'meta') {
        const n = Math.min(state.remaining, chunk.length - offset)
        state.parts.push(Buffer.from(chunk.subarray(offset, offset + n)))
        offset += n
        state.remaining -= n
        if (state.remaining === 0) state = meta(state, out)
      } else {
        let block: Buffer
        if (carry === undefined && chunk.length - offset >= BLOCK) {
          block = chunk.subarray(offset, offset + BLOCK)
          offset += BLOCK
        } else {
          const have = carry?.length ?? 0
          const n = Math.min(BLOCK - have, chunk.length - offset)
          carry = Buffer.concat([carry ?? Buffer.alloc(0), chunk.subarray(offset, offset + n)])
          offset += n
          if (carry.length < BLOCK) continue
          block = carry
          carry = undefined
        }

        state = header(block, out)
        if (state.kind === 'data' && state.remaining === 0) state = {kind: 'header'}
        else if (state.kind === 'meta' && state.remaining === 0) state = meta(state, out)
      }
    }

    // eslint-disable-next-line no-await-in-loop
    await writeAll(sink, out, options.stopped)
  }

  if (state.kind !== 'end') {
    if (state.kind !== 'header' || carry !== undefined || pending.length > 0) damaged('the archive is cut short')
    await writeAll(sink, [Buffer.alloc(2 * BLOCK)], options.stopped)
  }

  return {directories, entries, opaque}
}

/** An entry name for a message: quoted, and cut to its first 200 characters when longer. */
export function quote(name: string): string {
  const chars = [...name]
  return chars.length > SHOWN_NAME ? `${JSON.stringify(chars.slice(0, SHOWN_NAME).join(''))}…` : JSON.stringify(name)
}

function indexOrLength(buffer: Buffer): number {
  const index = buffer.indexOf(0)
  return index === -1 ? buffer.length : index
}

/** Writes `parts` in one go (writev) and waits while the sink is full, unless GNU tar has stopped. */
async function writeAll(sink: Writable, parts: Buffer[], stopped: Promise<unknown>): Promise<void> {
  if (parts.length === 0) return
  sink.cork()
  let room = true
  for (const part of parts) room = sink.write(part)
  sink.uncork()
  if (!room) {
    await Promise.race([
      once(sink, 'drain'),
      stopped.then(() => {
        throw new Error('tar stopped reading')
      }),
    ])
  }
}
