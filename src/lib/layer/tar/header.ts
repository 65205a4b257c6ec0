/**
 * Writing the tar format (ustar headers, pax records) for reproducible layers. Reading is
 * reader.ts's alone, so there is one parser of what wafers unpacks.
 */

export const BLOCK = 512

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

/** One ustar header block; what does not fit it has gone into a pax header already. */
function headerBlock(entry: Required<Omit<EntryHeader, 'mtimeNs' | 'xattrs'>>): Buffer {
  const block = Buffer.alloc(BLOCK)
  entry.name.copy(block, 0, 0, Math.min(100, entry.name.length))
  writeOctal(block, 100, 8, entry.mode)
  writeOctal(block, 108, 8, entry.uid)
  writeOctal(block, 116, 8, entry.gid)
  writeOctal(block, 124, 12, entry.size)
  writeOctal(block, 136, 12, entry.mtime)
  block.write(entry.typeflag, 156, 'latin1')
  entry.linkname.copy(block, 157, 0, Math.min(100, entry.linkname.length))
  block.write('ustar\u000000', 257, 'latin1')
  writeOctal(block, 329, 8, entry.devmajor)
  writeOctal(block, 337, 8, entry.devminor)
  sealHeader(block)
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

/** Writes the checksum of ustar header `block` (its other fields filled in) into its checksum field. */
export function sealHeader(block: Buffer): void {
  block.fill(0x20, 148, 156)
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += block[i]
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1')
}
