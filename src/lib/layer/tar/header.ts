/**
 * The tar format (ustar, GNU long names, pax records), read and written a block at a time so the
 * layer code can check every entry of a stream before GNU tar sees it, and write reproducible
 * layers. Only what OCI layers use; the rest is refused by the callers.
 */

export const BLOCK = 512

/** The fields of one 512-byte header, as raw as the callers need them. */
export interface RawHeader {
  /** The name field, joined with the ustar prefix when the header is POSIX ustar. */
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

/** True when the block is all zeros: the end of an archive. */
export function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false
  return true
}

function field(block: Buffer, offset: number, length: number): Buffer {
  const end = block.indexOf(0, offset)
  return block.subarray(offset, end === -1 || end > offset + length ? offset + length : end)
}

/** A numeric field: octal text, or base-256 when its first byte has the high bit set (GNU, Go). */
function numeric(block: Buffer, offset: number, length: number): number {
  if (block[offset] & 0x80) {
    if (block[offset] === 0xff) return Number.NaN // negative: no layer needs one
    let value = block[offset] & 0x7f
    for (let i = offset + 1; i < offset + length; i++) value = value * 256 + block[i]
    return Number.isSafeInteger(value) ? value : Number.NaN
  }

  const text = block
    .toString('latin1', offset, offset + length)
    .replace(/[\0 ]+$/, '')
    .replace(/^ +/, '')
  if (text === '') return 0
  if (!/^[0-7]+$/.test(text)) return Number.NaN
  return Number.parseInt(text, 8)
}

/** Whether the checksum field matches the block, as GNU tar checks it (unsigned or signed sum). */
export function checksumMatches(block: Buffer): boolean {
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

/** Decodes a header block; undefined when its checksum or a numeric field is not valid. */
export function parseHeader(block: Buffer): RawHeader | undefined {
  if (!checksumMatches(block)) return undefined
  const magic = block.toString('latin1', 257, 263)
  let name = field(block, 0, 100)
  // POSIX ustar ("ustar\0") splits long names into prefix/name; old GNU ("ustar  ") keeps times there.
  if (magic === 'ustar\0' && block[345] !== 0) name = Buffer.concat([field(block, 345, 155), Buffer.from('/'), name])
  const header: RawHeader = {
    devmajor: numeric(block, 329, 8),
    devminor: numeric(block, 337, 8),
    gid: numeric(block, 116, 8),
    linkname: field(block, 157, 100),
    mode: numeric(block, 100, 8),
    mtime: numeric(block, 136, 12),
    name,
    size: numeric(block, 124, 12),
    typeflag: String.fromCharCode(block[156]),
    uid: numeric(block, 108, 8),
  }
  if ([header.mode, header.uid, header.gid, header.size, header.mtime].some((n) => Number.isNaN(n))) return undefined
  return header
}

/**
 * The records of a pax extended header ("LEN key=value\n" each), values as raw bytes; undefined
 * when the data is malformed.
 */
export function parsePax(data: Buffer): Map<string, Buffer> | undefined {
  const records = new Map<string, Buffer>()
  let offset = 0
  while (offset < data.length) {
    if (data[offset] === 0) break // some writers pad with NULs
    const space = data.indexOf(0x20, offset)
    if (space === -1 || space - offset > 20) return undefined
    const lengthText = data.toString('latin1', offset, space)
    if (!/^[1-9][0-9]*$/.test(lengthText)) return undefined
    const end = offset + Number(lengthText)
    if (end > data.length || data[end - 1] !== 0x0a) return undefined
    const equals = data.indexOf(0x3d, space + 1)
    if (equals === -1 || equals >= end - 1) return undefined
    records.set(data.toString('utf8', space + 1, equals), data.subarray(equals + 1, end - 1))
    offset = end
  }

  return records
}

/** One pax record, "LEN key=value\n", its length counting itself. */
export function paxRecord(key: string, value: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value as string), Buffer.from('\n')])
  let length = body.length + 1
  while (String(length).length + body.length !== length) length = String(length).length + body.length
  return Buffer.concat([Buffer.from(String(length)), body])
}

/** Rounds a data size up to whole blocks. */
export function padded(size: number): number {
  return Math.ceil(size / BLOCK) * BLOCK
}

/**
 * A time as pax writes it: the exact decimal of `seconds` + `ns` / 10^9 (integers, never a float
 * printed), its fraction without trailing zeros, with a minus sign before 1970.
 */
export function paxTime(seconds: number, ns: number): string {
  const total = BigInt(seconds) * 1_000_000_000n + BigInt(ns)
  const sign = total < 0n ? '-' : ''
  const abs = total < 0n ? -total : total
  const fraction = abs % 1_000_000_000n
  const decimals = fraction === 0n ? '' : `.${String(fraction).padStart(9, '0').replace(/0+$/, '')}`
  return `${sign}${abs / 1_000_000_000n}${decimals}`
}

/** What one entry of a layer is, to write it as one header (plus a pax header when needed). */
export interface EntryHeader {
  name: Buffer
  typeflag: string
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  /** Nanoseconds past `mtime` (0 to 999,999,999), written as a pax mtime when not zero. */
  mtimeNs?: number
  linkname?: Buffer
  devmajor?: number
  devminor?: number
  /** Extended attributes, written as pax SCHILY.xattr.NAME records in the order given. */
  xattrs?: [string, Buffer][]
}

function writeOctal(block: Buffer, offset: number, length: number, value: number): boolean {
  const text = value.toString(8)
  if (text.length > length - 1) return false
  block.write(text.padStart(length - 1, '0'), offset, 'latin1')
  block[offset + length - 1] = 0
  return true
}

function headerBlock(entry: {
  name: Buffer
  typeflag: string
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  linkname: Buffer
  devmajor: number
  devminor: number
}): Buffer {
  const block = Buffer.alloc(BLOCK)
  entry.name.copy(block, 0, 0, Math.min(100, entry.name.length))
  writeOctal(block, 100, 8, entry.mode)
  writeOctal(block, 108, 8, entry.uid)
  writeOctal(block, 116, 8, entry.gid)
  writeOctal(block, 124, 12, entry.size)
  writeOctal(block, 136, 12, entry.mtime)
  block.write(entry.typeflag, 156, 'latin1')
  entry.linkname.copy(block, 157, 0, Math.min(100, entry.linkname.length))
  block.write('ustar\0' + '00', 257, 'latin1')
  writeOctal(block, 329, 8, entry.devmajor)
  writeOctal(block, 337, 8, entry.devminor)
  block.fill(0x20, 148, 156)
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += block[i]
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1')
  return block
}

/**
 * The blocks that start an entry: a pax header when a field does not fit ustar (long or non-ASCII
 * names, big numbers, xattrs, sub-second mtime), then the ustar header. Both are fully determined
 * by `entry`: no user or group names, no atime/ctime, no PID in the pax header's name.
 */
export function encodeHeader(entry: EntryHeader): Buffer {
  const linkname = entry.linkname ?? Buffer.alloc(0)
  const records: Buffer[] = []
  const long = (name: Buffer) => name.length > 100
  // Names are bytes; pax says UTF-8, so other bytes are marked BINARY (as GNU tar and Go do).
  const binary = (name: Buffer) => Buffer.from(name.toString('utf8')).compare(name) !== 0
  if ((long(entry.name) && binary(entry.name)) || (long(linkname) && binary(linkname)))
    records.push(paxRecord('hdrcharset', 'BINARY'))
  if (long(entry.name)) records.push(paxRecord('path', entry.name))
  if (long(linkname)) records.push(paxRecord('linkpath', linkname))
  const fits = (value: number, digits: number) => value >= 0 && value.toString(8).length <= digits
  if (!fits(entry.uid, 7)) records.push(paxRecord('uid', String(entry.uid)))
  if (!fits(entry.gid, 7)) records.push(paxRecord('gid', String(entry.gid)))
  if (!fits(entry.size, 11)) records.push(paxRecord('size', String(entry.size)))
  if (entry.mtimeNs || !fits(entry.mtime, 11))
    records.push(paxRecord('mtime', paxTime(entry.mtime, entry.mtimeNs ?? 0)))

  for (const [name, value] of entry.xattrs ?? []) records.push(paxRecord(`SCHILY.xattr.${name}`, value))
  const ustar = headerBlock({
    devmajor: entry.devmajor ?? 0,
    devminor: entry.devminor ?? 0,
    gid: fits(entry.gid, 7) ? entry.gid : 0,
    linkname: linkname.length > 100 ? linkname.subarray(0, 100) : linkname,
    mode: entry.mode & 0o7777,
    mtime: fits(entry.mtime, 11) ? entry.mtime : 0,
    name: entry.name.length > 100 ? entry.name.subarray(0, 100) : entry.name,
    size: fits(entry.size, 11) ? entry.size : 0,
    typeflag: entry.typeflag,
    uid: fits(entry.uid, 7) ? entry.uid : 0,
  })
  if (records.length === 0) return ustar
  const pax = Buffer.concat(records)
  const paxName = Buffer.from('PaxHeader')
  const paxHeader = headerBlock({
    devmajor: 0,
    devminor: 0,
    gid: 0,
    linkname: Buffer.alloc(0),
    mode: 0o644,
    mtime: 0,
    name: paxName,
    size: pax.length,
    typeflag: 'x',
    uid: 0,
  })
  return Buffer.concat([paxHeader, pax, Buffer.alloc(padded(pax.length) - pax.length), ustar])
}
