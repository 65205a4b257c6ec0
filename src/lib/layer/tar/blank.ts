/*
 * A layer copied with one file's content emptied (push's blank machine id): the tar is rewritten
 * as a stream, header by header, so everything else stays byte for byte.
 */
import {promises as fs} from 'node:fs'

import {WafersError} from '../../errors.js'
import {BLOCK, padded, sealHeader} from './header.js'
import {isZero, parseHeader, parsePax} from './reader.js'

/**
 * Copies the gzip layer `input` (one wafers packed) to `output` (a new file) with the content of
 * its regular file `entry` (a path as the layer names it, no leading `./`) emptied, everything
 * else byte for byte, recompressed as packLayer compresses (compress.ts), so the same layer still
 * gives the same bytes. Returns the new blob's digest and size and the diffID of the new tar.
 */
export async function copyEmptyingEntry(
  input: string,
  output: string,
  entry: string,
): Promise<{diffId: string; digest: string; size: number}> {
  const [{startCompression}, {createGunzip}, {createReadStream}] = await Promise.all([
    import('../compress.js'),
    import('node:zlib'),
    import('node:fs'),
  ])
  const file = await fs.open(output, 'wx+')
  try {
    const compression = await startCompression(file, {output, shownAs: input})
    const emit = async (part: Buffer): Promise<void> => {
      // Nothing more to read once the compressor is gone: stop() says why it went.
      if (compression.input.destroyed) throw new WafersError(`the compressor of ${input} stopped early.`)
      // A compressor that died takes nothing more: its exit ends the wait, and finish() says why.
      if (!compression.input.write(part))
        await Promise.race([new Promise((resolve) => compression.input.once('drain', resolve)), compression.exited])
    }

    try {
      const blanker = new EntryBlanker(entry)
      // pipe() passes no read error on: a file that cannot be read would leave the loop waiting.
      const source = createReadStream(input)
      const gunzip = createGunzip()
      source.once('error', (error) => gunzip.destroy(error))
      for await (const chunk of source.pipe(gunzip) as AsyncIterable<Buffer>) {
        for (const part of blanker.write(chunk)) await emit(part)
      }

      for (const part of blanker.end()) await emit(part)
      return await compression.finish()
    } catch (error) {
      return await compression.stop(error)
    }
  } finally {
    await file.close()
  }
}

/**
 * Rewrites a layer tar wafers packed, as it streams, with the content of its regular file `entry`
 * emptied (its header's size 0, the checksum made to match) and every other byte as it is: what
 * push sends with the machine id blanked, and what a pull's dedupe hashes a wafer against.
 */
export class EntryBlanker {
  constructor(private readonly entry: string) {}

  /** Bytes of entry data still to come after a header, and whether they are passed on or dropped. */
  private data = 0
  private dropping = false
  private ended = false
  /** The records of the pax header just read, which stand for the next entry's. */
  private next: Map<string, Buffer> | undefined
  /** A pax header's data, kept to read its path and size records. */
  private pax: Buffer[] | undefined
  private paxSize = 0
  private pending: Buffer = Buffer.alloc(0)

  /** What is left at the end (bytes after the last whole block, unless they are dropped data). */
  end(): Buffer[] {
    const rest = this.pending
    this.pending = Buffer.alloc(0)
    return rest.length > 0 && !this.dropping ? [rest] : []
  }

  /** The bytes to pass on for `chunk`, in order. */
  write(chunk: Buffer): Buffer[] {
    const out: Buffer[] = []
    let pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk])
    while (pending.length > 0) {
      if (this.ended || this.data > 0) {
        const take = this.ended ? pending.length : Math.min(this.data, pending.length)
        const part = pending.subarray(0, take)
        this.pax?.push(Buffer.from(part))
        if (!this.dropping) out.push(part)
        pending = pending.subarray(take)
        if (!this.ended) this.data -= take
        if (this.data === 0 && this.pax) {
          this.next = paxOf(Buffer.concat(this.pax).subarray(0, this.paxSize))
          this.pax = undefined
        }

        continue
      }

      if (pending.length < BLOCK) break
      const block = Buffer.from(pending.subarray(0, BLOCK))
      pending = pending.subarray(BLOCK)
      const header = isZero(block) ? undefined : parseHeader(block)
      if (typeof header === 'string') throw new WafersError(`a packed layer cannot be read again: ${header}.`)
      if (header === undefined) {
        // The zero blocks at the end, and whatever padding follows: passed on as they are.
        this.ended = true
        out.push(block)
        continue
      }

      const records = this.next
      this.next = undefined
      const name = (records?.get('path') ?? header.name).toString('latin1').replace(/^(\.\/)+|^\/+/, '')
      const entrySize = records?.has('size') ? Number(records.get('size')!.toString('latin1')) : header.size
      if (header.typeflag === 'x' || header.typeflag === 'g') this.pax = header.typeflag === 'x' ? [] : undefined
      this.paxSize = entrySize
      this.dropping =
        name === this.entry &&
        !records?.has('size') &&
        (header.typeflag === '0' || header.typeflag === '\0') &&
        entrySize > 0
      this.data = padded(entrySize)
      if (this.dropping) emptySize(block)
      out.push(block)
      if (this.data === 0 && this.pax) {
        this.next = paxOf(Buffer.alloc(0))
        this.pax = undefined
      }
    }

    this.pending = pending
    return out
  }
}

/** The records of a pax header of a layer wafers packed; its own writer made it, so a fault is a bug. */
function paxOf(data: Buffer): Map<string, Buffer> {
  const records = parsePax(data)
  if (typeof records === 'string') throw new WafersError(`a packed layer cannot be read again: ${records}.`)
  return records
}

/** Sets the size field of a ustar header block to 0 and its checksum to match. */
function emptySize(block: Buffer): void {
  block.write('00000000000\0', 124, 'latin1')
  sealHeader(block)
}
