/**
 * The one tar reader: every tar wafers unpacks (a pulled layer, a Containerfile's ADD of a local
 * tarball, the tar seeder's root file system) is read here, once, and what it yields is exactly
 * what the unpacker writes. "What is checked is not what is written" was the class of bug when a
 * gate read the stream and GNU tar wrote it: the two parsed pax records differently. So this
 * reader is strict where readers differ (GNU tar, Python's tarfile, Go's archive/tar): a header or
 * pax record that any of them could read another way is refused in one sentence naming the entry,
 * never guessed at.
 *
 * It also checks each entry against the ones before it, in time linear in the archive's size:
 * no absolute name or `..`, no path through a symlink or a non-directory an earlier entry made,
 * hard links only to earlier regular files of the same archive. The entries made so far are a
 * tree of nodes (parent id + name -> node) and the path of the previous entry is kept, so a
 * deep tree listed in order costs one lookup per new component, not one per component per entry.
 *
 * Streams: the data of an entry is handed on in the chunks it arrived in; the only bytes held are
 * one header, one pax or long-name header (at most 1 MiB) and the tree of names.
 */
import type {Hash} from 'node:crypto'

import {WafersError} from '../../errors.js'
import {WHITEOUT_PREFIX, whiteoutKind} from '../whiteouts.js'
import {BLOCK, padded} from './header.js'

const SLASH = Buffer.from('/')
/** Names in refusals are cut to this many characters (a name may be a megabyte long). */
const SHOWN_NAME = 200
/** The largest pax or GNU long-name header read (GNU tar's own limit is lower in practice). */
const MAX_META = 1024 * 1024
/**
 * The most memory the tree of names may take (each name's bytes plus 100 for its node): about a
 * million entries of ordinary names. A tar that needs more is refused rather than let exhaust memory.
 */
export const MAX_TRACKED_BYTES = 256 * 1024 * 1024

/** What an entry makes. Whiteouts and opaque markers only in a layer (`layer: true`). */
export type EntryType = 'block' | 'char' | 'dir' | 'fifo' | 'file' | 'link' | 'opaque' | 'symlink' | 'whiteout'

/** A node of the tree of what the entries so far made (or, for implicit parents, need). */
export interface TreeNode {
  /** Unique within one read; the root is 0. */
  readonly id: number
  readonly parent: TreeNode | undefined
  /** The component's bytes (empty for the root). */
  readonly name: Buffer
  readonly depth: number
  /** 'implicit' is a directory no entry listed, only needed as a parent. */
  kind: 'dir' | 'file' | 'implicit' | 'other' | 'symlink'
  /** How many children were ever made under it; a directory with children is never replaced. */
  children: number
  /** The child directories, so the unpacker can walk them once at the end. */
  dirs?: TreeNode[]
  /** Set by the unpacker: what to give this directory at the end. */
  meta?: unknown
}

/** One entry as the unpacker writes it. */
export interface TarEntry {
  type: EntryType
  /** The name as the archive spelled it, for messages. */
  raw: Buffer
  /** The node the entry makes (for a whiteout: the hidden name; for an opaque marker: its directory). */
  node: TreeNode
  /**
   * How many of `chain` (the nodes from the root to the entry's parent) are the same as in the
   * previous entry's chain: the unpacker keeps its open directories for those.
   */
  kept: number
  /** The nodes from the root (index 0) to the entry's parent directory. Valid until the next entry. */
  chain: readonly TreeNode[]
  /** Whether the node existed (made by an earlier entry) before this one. */
  replaces: boolean
  mode: number
  uid: number
  gid: number
  /** Modification time in whole microseconds since the epoch (see layer/unpack.ts on why µs). */
  mtimeUs: bigint
  size: number
  /** A symlink's target (raw bytes); a hard link's target node for type 'link'. */
  linkname: Buffer
  target?: TreeNode
  devmajor: number
  devminor: number
  /** Extended attributes as the archive names them (pax SCHILY.xattr.NAME). */
  xattrs: [string, Buffer][]
  /** A whiteout or marker under a non-directory an earlier entry made: nothing to do. */
  moot: boolean
  /** The entry's data, `size` bytes; read it before asking for the next entry, or it is skipped. */
  data(): AsyncIterable<Buffer>
}

export interface ReadOptions {
  /** How messages name the archive, e.g. 'layer 1 of 3 (sha256:...)'. */
  name: string
  /** Every byte of the source goes into it, also those past the end of the archive. */
  hash?: Hash
  /** Whether `.wh.` names are OCI whiteouts (a layer) or ordinary names (any other tarball). */
  layer: boolean
}

/** An entry name for a message: quoted, and cut to its first 200 characters when longer. */
export function quote(name: string): string {
  const chars = [...name]
  return chars.length > SHOWN_NAME ? `${JSON.stringify(chars.slice(0, SHOWN_NAME).join(''))}…` : JSON.stringify(name)
}

/** Pulls exact byte counts out of a stream of chunks, hashing every chunk once. */
class Bytes {
  private chunk: Buffer = Buffer.alloc(0)
  private offset = 0
  private readonly iterator: AsyncIterator<Buffer>
  private done = false

  constructor(
    source: AsyncIterable<Buffer>,
    private readonly hash?: Hash,
  ) {
    this.iterator = source[Symbol.asyncIterator]()
  }

  /** Up to `max` bytes at once, or undefined at the end of the stream. */
  async some(max: number): Promise<Buffer | undefined> {
    while (this.offset >= this.chunk.length) {
      if (this.done) return undefined
      const next = await this.iterator.next()
      if (next.done) {
        this.done = true
        return undefined
      }

      const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value)
      this.hash?.update(chunk)
      this.chunk = chunk
      this.offset = 0
    }

    const n = Math.min(max, this.chunk.length - this.offset)
    const out = this.chunk.subarray(this.offset, this.offset + n)
    this.offset += n
    return out
  }

  /** Exactly `n` bytes; fewer only at the end of the stream. */
  async exact(n: number): Promise<Buffer> {
    const first = await this.some(n)
    if (first === undefined) return Buffer.alloc(0)
    if (first.length === n) return first
    const parts = [Buffer.from(first)]
    let have = first.length
    while (have < n) {
      const part = await this.some(n - have)
      if (part === undefined) break
      parts.push(Buffer.from(part))
      have += part.length
    }

    return Buffer.concat(parts)
  }

  /** Reads and hashes the rest of the stream. */
  async drain(): Promise<void> {
    while ((await this.some(1 << 20)) !== undefined);
  }
}

export interface Header {
  name: Buffer
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  typeflag: string
  linkname: Buffer
  devmajor: number
  devminor: number
}

/** A numeric field: octal (leading blanks, then digits, then only NULs or blanks) or base-256. */
function numeric(block: Buffer, offset: number, length: number): number {
  if (block[offset] & 0x80) {
    if (block[offset] === 0xff) return Number.NaN // negative: no tar wafers reads needs one
    let value = block[offset] & 0x7f
    for (let i = offset + 1; i < offset + length; i++) value = value * 256 + block[i]
    return Number.isSafeInteger(value) ? value : Number.NaN
  }

  const text = block.toString('latin1', offset, offset + length)
  const match = /^ *([0-7]*)[ \0]*$/.exec(text)
  if (!match) return Number.NaN
  // A digit after a NUL would be read by one reader and not another: "[ \0]*$" refused it.
  return match[1] === '' ? 0 : Number.parseInt(match[1], 8)
}

/** A text field up to its first NUL; undefined when anything but NULs follows that NUL. */
function text(block: Buffer, offset: number, length: number): Buffer | undefined {
  const field = block.subarray(offset, offset + length)
  const end = field.indexOf(0)
  if (end === -1) return field
  for (let i = end + 1; i < length; i++) if (field[i] !== 0) return undefined
  return field.subarray(0, end)
}

function checksumMatches(block: Buffer): boolean {
  const stored = numeric(block, 148, 8)
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= 148 && i < 156 ? 0x20 : block[i]
    unsigned += byte
    signed += byte > 127 ? byte - 256 : byte
  }

  return stored === unsigned || stored === signed
}

/** Whether a block is all zeros (the end of an archive). */
export function isZero(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false
  return true
}

/** Decodes a header block, or says in a few words why it cannot be read one way only. */
export function parseHeader(block: Buffer): Header | string {
  if (!checksumMatches(block)) return 'a header has a wrong checksum'
  const magic = block.toString('latin1', 257, 265)
  const posix = magic === 'ustar\u000000'
  const gnu = magic === 'ustar  \u0000'
  if (!posix && !gnu && !/^\0{8}$/.test(magic)) return 'a header has an unknown format (magic)'
  let name = text(block, 0, 100)
  const linkname = text(block, 157, 100)
  if (name === undefined || linkname === undefined) return 'a header has bytes after the end of a name'
  if (posix && block[345] !== 0) {
    const prefix = text(block, 345, 155)
    if (prefix === undefined) return 'a header has bytes after the end of a name'
    name = Buffer.concat([prefix, Buffer.from('/'), name])
  }

  const header: Header = {
    devmajor: numeric(block, 329, 8),
    devminor: numeric(block, 337, 8),
    gid: numeric(block, 116, 8),
    // Copies: the block may be part of the caller's chunk, and names outlive it.
    linkname: Buffer.from(linkname),
    mode: numeric(block, 100, 8),
    mtime: numeric(block, 136, 12),
    name: Buffer.from(name),
    size: numeric(block, 124, 12),
    typeflag: String.fromCharCode(block[156]),
    uid: numeric(block, 108, 8),
  }
  if (!posix && !gnu) {
    header.devmajor = 0
    header.devminor = 0
  }

  if ([header.mode, header.uid, header.gid, header.size, header.mtime].some((n) => Number.isNaN(n)))
    return 'a header has a number that is not octal'
  if (Number.isNaN(header.devmajor) || Number.isNaN(header.devminor)) return 'a header has a bad device number'
  return header
}

const UTF8 = new TextDecoder('utf-8', {fatal: true})

function isUtf8(bytes: Buffer): boolean {
  try {
    UTF8.decode(bytes)
    return true
  } catch {
    return false
  }
}

/**
 * The records of a pax header ("LEN key=value\n" each), strictly: one blank after the length,
 * a key of no blanks, the length exact. A string says what is wrong.
 */
export function parsePax(data: Buffer): Map<string, Buffer> | string {
  const records = new Map<string, Buffer>()
  let offset = 0
  while (offset < data.length) {
    const space = data.indexOf(0x20, offset)
    if (space === -1 || space === offset || space - offset > 20) return 'a pax record has no length'
    const lengthText = data.toString('latin1', offset, space)
    if (!/^[1-9][0-9]*$/.test(lengthText)) return 'a pax record has a bad length'
    const end = offset + Number(lengthText)
    if (end > data.length || end <= space + 1 || data[end - 1] !== 0x0a) return 'a pax record has a wrong length'
    const equals = data.indexOf(0x3d, space + 1)
    if (equals === -1 || equals >= end) return "a pax record has no '='"
    const key = data.subarray(space + 1, equals)
    if (key.length === 0) return 'a pax record has an empty key'
    if (key.includes(0x20) || key.includes(0x09) || key.includes(0x0a) || key.includes(0))
      return 'a pax record has blanks in its key'
    if (!isUtf8(key)) return 'a pax record has a key that is not UTF-8'
    const name = key.toString('utf8')
    if (records.has(name)) return `a pax header sets ${name} twice`
    records.set(name, data.subarray(equals + 1, end - 1))
    offset = end
  }

  return records
}

/** Keys of an 'x' header that wafers reads; others it ignores, as GNU tar and tarfile do. */
const IGNORED = new Set(['atime', 'ctime', 'comment', 'charset', 'uname', 'gname'])
/** Keys a global ('g') header may set: none that change what an entry is. */
const GLOBAL_OK = new Set(['comment', 'charset'])

const TYPES: Record<string, EntryType> = {
  '\0': 'file',
  '0': 'file',
  '1': 'link',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
  '7': 'file',
}

/**
 * Reads the tar in `source` entry by entry, checking each (see the module comment), and yields
 * it for writing; throws a WafersError naming the archive and the entry on the first thing it
 * refuses. Returns after the end-of-archive blocks, having hashed the rest of the stream.
 */
export async function* readTar(source: AsyncIterable<Buffer>, options: ReadOptions): AsyncGenerator<TarEntry, number> {
  const bytes = new Bytes(source, options.hash)
  const archive = options.name
  let nextId = 1
  const root: TreeNode = {children: 0, depth: 0, dirs: [], id: 0, kind: 'dir', name: Buffer.alloc(0), parent: undefined}
  const nodes = new Map<string, TreeNode>()
  let tracked = 0
  let entries = 0
  let lastShown = ''
  /** The previous entry's parent path (normalised) and the node of each of its components. */
  let chainPath: Buffer = Buffer.alloc(0)
  const chain: TreeNode[] = [root]
  /** chainEnds[i]: the byte offset in chainPath where component i (chain[i + 1]) ends. */
  const chainEnds: number[] = []

  const refuse = (raw: Buffer, why: string): never => {
    throw new WafersError(`${archive} was refused: its entry ${quote(raw.toString('utf8'))} ${why}.`)
  }

  const damaged = (why: string): never => {
    const after = lastShown === '' ? 'at its start' : `after the entry ${quote(lastShown)}`
    throw new WafersError(`${archive} is not a valid tar: ${why} ${after}.`)
  }

  const child = (parent: TreeNode, name: Buffer): TreeNode | undefined =>
    nodes.get(`${parent.id}/${name.toString('latin1')}`)

  const add = (parent: TreeNode, name: Buffer, kind: TreeNode['kind']): TreeNode => {
    tracked += name.length + 100
    if (tracked > MAX_TRACKED_BYTES)
      throw new WafersError(`${archive} was refused: it has more entries than wafers tracks (256 MiB of names).`)
    const node: TreeNode = {children: 0, depth: parent.depth + 1, id: nextId++, kind, name, parent}
    if (kind === 'dir' || kind === 'implicit') node.dirs = []
    nodes.set(`${parent.id}/${name.toString('latin1')}`, node)
    parent.children++
    if (node.dirs) parent.dirs!.push(node)
    return node
  }

  /**
   * The components of a name ('' for the root), or a refusal when it would leave the tree or could
   * be read two ways. Uses native searches on the common, clean case.
   */
  const normalise = (raw: Buffer, what: string, entryRaw: Buffer): Buffer => {
    if (raw.length === 0) refuse(entryRaw, `has an empty ${what}`)
    if (raw[0] === 0x2f) refuse(entryRaw, `has an absolute ${what}, which would land outside`)
    // One pass over the bytes: a name is clean when no component is empty, "." or ".." (past a
    // leading "./" and trailing slashes, which every reader drops).
    let clean = true
    let start = 0
    while (raw[start] === 0x2e && raw[start + 1] === 0x2f) {
      start += 2
      while (raw[start] === 0x2f) start++
    }

    let length = raw.length
    while (length > start && raw[length - 1] === 0x2f) length--
    if (length === start + 1 && raw[start] === 0x2e) return Buffer.alloc(0)
    const first = start
    // A deep tree listed in order repeats the previous entry's parent path: it was checked then.
    const known = chainPath.length
    if (
      what === 'name' &&
      known > 0 &&
      length > first + known &&
      raw[first + known] === 0x2f &&
      raw.compare(chainPath, 0, known, first, first + known) === 0
    )
      start = first + known + 1
    for (let i = start; i <= length; i++) {
      const byte = i === length ? 0x2f : raw[i]
      if (byte === 0) refuse(entryRaw, `has a NUL byte in its ${what}`)
      if (byte !== 0x2f) continue
      const size = i - start
      if (size === 0 || (size === 1 && raw[start] === 0x2e)) clean = false
      else if (size === 2 && raw[start] === 0x2e && raw[start + 1] === 0x2e)
        refuse(entryRaw, `has ".." in its ${what}, which could land outside`)
      start = i + 1
    }

    if (raw.indexOf(0, length) !== -1) refuse(entryRaw, `has a NUL byte in its ${what}`)
    const name = raw.subarray(first, length)
    if (clean) return name
    const parts = name
      .toString('latin1')
      .split('/')
      .filter((part) => part !== '' && part !== '.')
    return Buffer.from(parts.join('/'), 'latin1')
  }

  /** Where in `parentPath` the components the previous entry's chain already checked end. */
  const known = (parentPath: Buffer): number => {
    const length = chainPath.length
    if (length === 0 || parentPath.length < length || parentPath.compare(chainPath, 0, length, 0, length) !== 0)
      return 0
    if (parentPath.length === length) return length
    return parentPath[length] === 0x2f ? length + 1 : 0
  }

  /**
   * Walks `parentPath` from the root, reusing the previous entry's chain where the paths agree;
   * leaves `chain` as the nodes of the path. Implicit directories are added for missing
   * components. Returns how many chain entries were kept, or the node that is in the way.
   */
  const walkChain = (parentPath: Buffer): {blocker?: TreeNode; kept: number} => {
    // The longest prefix of whole components shared with the previous chain (binary search:
    // prefix equality is monotone in the number of components).
    const same = (components: number): boolean => {
      const end = chainEnds[components - 1]
      return (
        end <= parentPath.length &&
        (end === parentPath.length || parentPath[end] === 0x2f) &&
        parentPath.compare(chainPath, 0, end, 0, end) === 0
      )
    }

    let lo = 0
    let hi = chainEnds.length
    // The common case, a tree listed in order: the whole previous chain is kept (one compare).
    if (hi > 0 && same(hi)) lo = hi
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if (same(mid)) lo = mid
      else hi = mid - 1
    }

    const kept = lo + 1
    chain.length = kept
    chainEnds.length = lo
    let offset = lo === 0 ? 0 : chainEnds[lo - 1] + 1
    let node = chain[kept - 1]
    while (offset < parentPath.length) {
      let slash = parentPath.indexOf(0x2f, offset)
      if (slash === -1) slash = parentPath.length
      const name = parentPath.subarray(offset, slash)
      let next = child(node, name)
      if (next === undefined) next = add(node, Buffer.from(name), 'implicit')
      else if (next.kind !== 'dir' && next.kind !== 'implicit') {
        chainPath = Buffer.alloc(0)
        chain.length = 1
        chainEnds.length = 0
        return {blocker: next, kept: 1}
      }

      chain.push(next)
      chainEnds.push(slash)
      node = next
      offset = slash + 1
    }

    // Names are the reader's own copies (see parseHeader), so the path can be kept as it is.
    chainPath = parentPath
    return {kept}
  }

  /** The node a hard link names, which must be a regular file an earlier entry made. */
  const linkTarget = (raw: Buffer, entryRaw: Buffer): TreeNode => {
    const target = normalise(raw, 'hard link target', entryRaw)
    const shownLink = quote(raw.toString('utf8'))
    if (target.length === 0) refuse(entryRaw, `is a hard link to ${shownLink}, the top directory itself`)
    let node: TreeNode | undefined = root
    let offset = 0
    while (node !== undefined && offset <= target.length) {
      let slash = target.indexOf(0x2f, offset)
      if (slash === -1) slash = target.length
      if (node.kind === 'symlink')
        refuse(entryRaw, `links through the symlink ${quote(path(node))} made by an earlier entry`)
      node = child(node, target.subarray(offset, slash))
      offset = slash + 1
    }

    if (node === undefined || node.kind !== 'file')
      refuse(entryRaw, `is a hard link to ${shownLink}, which is not a regular file made by an earlier entry`)
    return node!
  }

  for (;;) {
    const block = await bytes.exact(BLOCK)
    if (block.length < BLOCK) {
      if (entries === 0 && block.length === 0) damaged('the archive is empty')
      damaged('the archive is cut short')
    }

    if (isZero(block)) {
      // Entries after a lone zero block would be hidden from every reader (GNU tar warns): refused.
      const second = await bytes.exact(BLOCK)
      if (second.length === BLOCK && !isZero(second)) damaged('a lone zero block is followed by more of the archive')
      break
    }

    // Meta headers (pax 'x', GNU 'L'/'K') for the entry that follows, read into memory (bounded).
    let pax: Buffer | undefined
    let longName: Buffer | undefined
    let longLink: Buffer | undefined
    let header = parseHeader(block)
    let current = block
    for (;;) {
      if (typeof header === 'string') damaged(header)
      const h = header as Header
      if (!'xgLK'.includes(h.typeflag) || h.typeflag === '') break
      if (h.size > MAX_META) damaged(`a ${h.typeflag} header is larger than 1 MiB`)
      const content = await bytes.exact(h.size)
      if (content.length < h.size) damaged('the archive is cut short')
      const padding = await bytes.exact(padded(h.size) - h.size)
      if (padding.length < padded(h.size) - h.size) damaged('the archive is cut short')
      if (h.typeflag === 'g') {
        if (pax || longName || longLink) damaged('a global pax header sits between a header and its entry')
        const records = parsePax(content)
        if (typeof records === 'string') damaged(records.replace(/^a pax/, 'a global pax'))
        for (const key of (records as Map<string, Buffer>).keys())
          if (!GLOBAL_OK.has(key)) damaged(`a global pax header sets ${quote(key)}, which wafers does not apply`)
      } else if (h.typeflag === 'x') {
        if (pax) damaged('two pax headers describe one entry')
        pax = Buffer.from(content)
      } else {
        if ((h.typeflag === 'L' ? longName : longLink) !== undefined)
          damaged(`two GNU long-name (${h.typeflag}) headers describe one entry`)
        const end = content.indexOf(0)
        const value = Buffer.from(end === -1 ? content : content.subarray(0, end))
        if (end !== -1 && content.subarray(end).some((byte) => byte !== 0))
          damaged('a GNU long name has bytes after its end')
        if (h.typeflag === 'L') longName = value
        else longLink = value
      }

      current = await bytes.exact(BLOCK)
      if (current.length < BLOCK) damaged('the archive is cut short')
      if (isZero(current)) damaged('the archive ends between a header and its entry')
      header = parseHeader(current)
    }

    const h = header as Header
    let raw = longName ?? h.name
    let linkname = longLink ?? h.linkname
    let {gid, size, uid} = h
    let mtimeUs = BigInt(h.mtime) * 1_000_000n
    const xattrs: [string, Buffer][] = []
    const entryName = () => raw
    if (pax) {
      const records = parsePax(pax)
      if (typeof records === 'string') refuse(h.name, `has a malformed pax header (${records})`)
      const map = records as Map<string, Buffer>
      const binary = map.get('hdrcharset')?.toString('latin1')
      if (binary !== undefined && binary !== 'BINARY' && binary !== 'ISO-IR 10646 2000 UTF-8')
        refuse(h.name, `has a pax hdrcharset ${quote(binary)} wafers does not read`)
      const textValue = (key: string, value: Buffer): Buffer => {
        if (value.includes(0)) refuse(h.name, `has a NUL byte in its pax ${key}`)
        if (binary !== 'BINARY' && !isUtf8(value)) refuse(h.name, `has a pax ${key} that is not UTF-8`)
        return value
      }

      const number = (key: string, value: Buffer): number => {
        const text = value.toString('latin1')
        if (!/^(0|[1-9][0-9]*)$/.test(text) || !Number.isSafeInteger(Number(text)))
          refuse(h.name, `has a pax ${key} that is not a number`)
        return Number(text)
      }

      for (const [key, value] of map) {
        if (key === 'path') {
          if (longName !== undefined) refuse(h.name, 'has both a GNU long name and a pax path')
          raw = textValue(key, value)
        } else if (key === 'linkpath') {
          if (longLink !== undefined) refuse(h.name, 'has both a GNU long link and a pax linkpath')
          linkname = textValue(key, value)
        } else if (key === 'size') {
          const paxSize = number(key, value)
          if (h.size !== 0 && h.size !== paxSize) refuse(h.name, 'has a pax size that contradicts its header')
          size = paxSize
        } else if (key === 'uid') uid = number(key, value)
        else if (key === 'gid') gid = number(key, value)
        else if (key === 'mtime') {
          const match = /^(-?)(0|[1-9][0-9]{0,15})(?:\.([0-9]{1,9}))?$/.exec(value.toString('latin1'))
          if (!match) refuse(h.name, 'has a pax mtime that is not a time')
          const [, sign, seconds, fraction = ''] = match!
          const ns = BigInt(seconds) * 1_000_000_000n + BigInt(fraction.padEnd(9, '0'))
          // Rounded half up to whole microseconds (see layer/unpack.ts).
          const us = (ns + 500n) / 1000n
          mtimeUs = sign === '-' ? -us : us
        } else if (key.startsWith('SCHILY.xattr.')) {
          const attribute = key.slice('SCHILY.xattr.'.length)
          if (attribute === '') refuse(h.name, 'has an extended attribute with no name')
          xattrs.push([attribute, Buffer.from(value)])
        } else if (key.startsWith('GNU.sparse.')) refuse(h.name, 'is a sparse file, which wafers does not unpack')
        // Dropping an ACL would widen access (the group bits of such a file are the ACL's mask).
        else if (key.startsWith('SCHILY.acl.') && value.length > 0)
          refuse(h.name, 'has a POSIX ACL, which wafers does not unpack yet')
        else if (key === 'hdrcharset' || IGNORED.has(key) || key.startsWith('LIBARCHIVE.') || key.startsWith('SCHILY.'))
          continue
        // Other keys (vendor extensions) change nothing GNU tar or tarfile write; ignored like theirs.
      }
    }

    entries++
    lastShown = entryName().toString('utf8')
    const typeflag = h.typeflag
    if (typeflag === 'S') refuse(raw, 'is a sparse file, which wafers does not unpack')
    let type = TYPES[typeflag]
    if (type === undefined)
      refuse(raw, `has the tar entry type ${JSON.stringify(typeflag)}, which wafers does not unpack`)
    if (type !== 'file' && size !== 0) refuse(raw, 'is a link, device or directory that claims to carry data')
    const slashEnd = raw.at(-1) === 0x2f
    if (slashEnd && type !== 'dir') {
      // tarfile reads only an old-style ('\0') entry whose name ends in '/' as a directory.
      if (typeflag !== '\0' || size !== 0) refuse(raw, 'has a name ending in "/" but is not a directory')
      type = 'dir'
    }

    const name = normalise(raw, 'name', raw)
    const lastSlash = name.lastIndexOf(0x2f)
    let parentPath = lastSlash === -1 ? Buffer.alloc(0) : name.subarray(0, lastSlash)
    let base = name.subarray(lastSlash + 1)
    if (name.length === 0 && type !== 'dir') refuse(raw, 'would replace the top directory itself')
    // Whiteouts are read from the name alone, whatever the entry's type.
    let moot = false
    if (options.layer && name.length > 0) {
      if (hasWhiteoutComponent(parentPath, known(parentPath)))
        refuse(raw, 'has a whiteout name in the middle of its path')

      const kind = whiteoutKind(base)
      if (kind === 'aufs') {
        // aufs metadata (.wh..wh.plnk and such): dropped, as containerd does.
        await skip(padded(size))
        continue
      }

      if (kind === 'opaque') {
        type = 'opaque'
        const slash = parentPath.lastIndexOf(0x2f)
        base = parentPath.subarray(slash + 1)
        parentPath = slash === -1 ? Buffer.alloc(0) : parentPath.subarray(0, slash)
      } else if (kind === 'whiteout') {
        type = 'whiteout'
        base = base.subarray(WHITEOUT_PREFIX.length)
        if (base.length === 0 || base.equals(Buffer.from('.')) || base.equals(Buffer.from('..')))
          refuse(raw, 'is a whiteout of no file')
      }
    }

    const walked = walkChain(parentPath)
    const parent = chain.at(-1)!
    if (walked.blocker) {
      const blocker = walked.blocker
      if ((type === 'whiteout' || type === 'opaque') && blocker.kind !== 'symlink') moot = true
      else if (blocker.kind === 'symlink')
        refuse(raw, `lands through the symlink ${quote(path(blocker))} made by an earlier entry`)
      else
        refuse(
          raw,
          `lands under ${quote(path(blocker))}, which an earlier entry made a ${blocker.kind === 'file' ? 'file' : 'device'}`,
        )
    }

    let target: TreeNode | undefined
    if (type === 'link') target = linkTarget(linkname, raw)
    if (type === 'symlink' && linkname.includes(0)) refuse(raw, 'has a NUL byte in its link target')
    let node: TreeNode
    let replaces = false
    if (moot) node = root
    else if (type === 'opaque' && base.length === 0) node = root
    else if (name.length === 0) node = root
    else {
      const existing = child(parent, base)
      const kind: TreeNode['kind'] =
        type === 'dir'
          ? 'dir'
          : type === 'opaque'
            ? 'implicit'
            : type === 'symlink'
              ? 'symlink'
              : type === 'file' || type === 'link'
                ? 'file'
                : 'other'
      if (existing === undefined) node = add(parent, Buffer.from(base), kind)
      else {
        replaces = true
        node = existing
        const isDir = existing.kind === 'dir' || existing.kind === 'implicit'
        if (type === 'opaque') {
          if (!isDir) moot = true
        } else if (isDir && kind !== 'dir') {
          if (existing.children > 0)
            refuse(raw, `replaces the directory ${quote(path(existing))}, which holds entries made by earlier entries`)
          existing.kind = kind
          existing.dirs = undefined
          existing.parent!.dirs = existing.parent!.dirs!.filter((dir) => dir !== existing)
        } else if (!isDir && kind === 'dir') {
          existing.kind = 'dir'
          existing.dirs = []
          existing.parent!.dirs!.push(existing)
        } else if (kind === 'dir') existing.kind = 'dir'
        else existing.kind = kind
      }
    }

    if (target !== undefined && target === node) refuse(raw, 'is a hard link to itself')
    let remaining = padded(size)
    const entry: TarEntry = {
      chain,
      async *data() {
        let left = size
        while (left > 0) {
          const part = await bytes.some(left)
          if (part === undefined) damaged('the archive is cut short')
          left -= part!.length
          remaining -= part!.length
          yield part!
        }
      },
      devmajor: h.devmajor,
      devminor: h.devminor,
      gid,
      kept: walked.kept,
      linkname,
      mode: h.mode & 0o7777,
      moot,
      mtimeUs,
      node,
      raw,
      replaces,
      size,
      target,
      type: type!,
      uid,
      xattrs,
    }
    yield entry
    await skip(remaining)
  }

  async function skip(n: number): Promise<void> {
    let left = n
    while (left > 0) {
      const part = await bytes.some(left)
      if (part === undefined) damaged('the archive is cut short')
      left -= part!.length
    }
  }

  // GNU tar stops at the first zero block too; the rest is only hashed.
  await bytes.drain()
  return entries

  function path(node: TreeNode): string {
    const parts: Buffer[] = []
    for (let n: TreeNode | undefined = node; n && n.parent; n = n.parent) parts.push(n.name, SLASH)
    return Buffer.concat(parts.reverse().slice(1)).toString('utf8')
  }
}

/** Whether a component of `path` starts with ".wh." (one pass, no copies). */
function hasWhiteoutComponent(path: Buffer, from: number): boolean {
  for (let i = from; i + 3 < path.length; i++) {
    if (
      (i === 0 || path[i - 1] === 0x2f) &&
      path[i] === 0x2e &&
      path[i + 1] === 0x77 &&
      path[i + 2] === 0x68 &&
      path[i + 3] === 0x2e
    )
      return true
  }

  return false
}
