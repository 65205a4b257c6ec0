import {expect} from 'chai'
import fc from 'fast-check'
import {createHash} from 'node:crypto'

import {WafersError} from '../../../src/lib/errors.js'
import {compressionOf} from '../../../src/lib/layer/archive.js'
import {BLOCK, EntryHeader, encodeHeader, padded, paxRecord} from '../../../src/lib/layer/tar/header.js'
import {type Header, parseHeader, parsePax, readTar} from '../../../src/lib/layer/tar/reader.js'

/** Reads `tar` cut into the given chunk sizes; the entries (name, type, data hash) and the hash of all bytes. */
async function gate(tar: Buffer, cuts: number[] = []) {
  const chunks: Buffer[] = []
  let offset = 0
  for (const cut of cuts) {
    if (offset >= tar.length) break
    chunks.push(tar.subarray(offset, offset + cut))
    offset += cut
  }

  if (offset < tar.length) chunks.push(tar.subarray(offset))
  const hash = createHash('sha256')
  const entries: string[] = []
  const reader = readTar(
    (async function* () {
      yield* chunks
    })(),
    {hash, layer: true, name: 'the layer'},
  )
  let next = await reader.next()
  while (!next.done) {
    const entry = next.value
    const data = createHash('sha256')
    for await (const part of entry.data()) data.update(part)
    entries.push(
      `${entry.raw.toString('latin1')} ${entry.type} ${entry.mode} ${entry.uid}:${entry.gid} ${entry.mtimeUs} ${data.digest('hex')}`,
    )
    next = await reader.next()
  }

  return {count: next.value, diffId: hash.digest('hex'), entries}
}

const records = (data: Buffer) => parsePax(data) as Map<string, Buffer>
const headerOf = (block: Buffer) => parseHeader(block) as Header

function entryTar(entries: {content: Buffer; header: EntryHeader}[]): Buffer {
  const parts = entries.flatMap(({content, header}) => [
    encodeHeader({...header, size: content.length}),
    content,
    Buffer.alloc(padded(content.length) - content.length),
  ])
  return Buffer.concat([...parts, Buffer.alloc(2 * BLOCK)])
}

const plainName = fc
  .array(fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,40}$/), {maxLength: 5, minLength: 1})
  .map((parts) => parts.join('/'))
  .filter((name) => !name.split('/').some((part) => part.startsWith('.wh.') || part === '..' || part === '.'))

const entry = fc.record({
  content: fc.uint8Array({maxLength: 1500}).map((bytes) => Buffer.from(bytes)),
  header: fc.record({
    gid: fc.nat({max: 3_000_000}),
    mode: fc.nat({max: 0o7777}),
    mtime: fc.nat({max: 2 ** 34}),
    mtimeNs: fc.nat({max: 999_999_999}),
    name: fc.tuple(plainName, fc.nat({max: 200})).map(([name, pad]) => Buffer.from(`${'d'.repeat(pad)}${name}`)),
    size: fc.constant(0),
    typeflag: fc.constant('0'),
    uid: fc.nat({max: 3_000_000}),
    // Names unique, as on a file: a pax header that sets a key twice is refused.
    xattrs: fc.uniqueArray(
      fc.tuple(
        fc.stringMatching(/^user\.[a-z]{1,10}$/),
        fc.uint8Array({maxLength: 40}).map((bytes) => Buffer.from(bytes)),
      ),
      {maxLength: 2, selector: ([name]) => name},
    ),
  }),
})

describe('OCI layer tars (unit)', () => {
  it('maps OCI and Docker layer media types to their compression', () => {
    expect(compressionOf('application/vnd.oci.image.layer.v1.tar+gzip')).to.equal('gzip')
    expect(compressionOf('application/vnd.oci.image.layer.v1.tar+zstd')).to.equal('zstd')
    expect(compressionOf('application/vnd.oci.image.layer.v1.tar')).to.equal('none')
    expect(compressionOf('application/vnd.docker.image.rootfs.diff.tar.gzip')).to.equal('gzip')
    expect(() => compressionOf('application/vnd.docker.image.rootfs.foreign.diff.tar.gzip'))
      .to.throw(WafersError)
      .with.property('message')
      .that.matches(/non-distributable \(foreign\) layer/)
    expect(() => compressionOf('application/vnd.oci.image.layer.v1.tar+lz4')).to.throw(WafersError, /tar\+lz4/)
    expect(() => compressionOf('application/vnd.oci.image.layer.nondistributable.v1.tar+gzip')).to.throw(
      WafersError,
      /non-distributable/,
    )
  })

  it('writes pax records whose length counts itself, at every digit boundary', () => {
    fc.assert(
      fc.property(fc.string({maxLength: 2000}), (value) => {
        const record = paxRecord('path', value)
        const length = Number(record.toString('latin1').split(' ')[0])
        return length === record.length && records(record).get('path')?.toString() === value
      }),
      {numRuns: 500},
    )
  })

  it('reads back every header it writes, with long names and big numbers in pax', () => {
    fc.assert(
      fc.property(entry, ({content, header}) => {
        const blocks = encodeHeader({...header, size: content.length})
        const last = headerOf(blocks.subarray(blocks.length - BLOCK))
        expect(last.mode).to.equal(header.mode)
        expect(last.size).to.equal(content.length)
        if (blocks.length === BLOCK) {
          expect(last.name.equals(header.name)).to.equal(true)
          expect([last.uid, last.gid, last.mtime]).to.deep.equal([header.uid, header.gid, header.mtime])
        } else {
          const pax = headerOf(blocks.subarray(0, BLOCK))
          expect(pax.typeflag).to.equal('x')
          const pairs = records(blocks.subarray(BLOCK, BLOCK + pax.size))
          expect((pairs.get('path') ?? last.name).equals(header.name)).to.equal(true)
          expect(Number(pairs.get('uid') ?? last.uid)).to.equal(header.uid)
        }
      }),
      {numRuns: 300},
    )
  })

  it('reads the same entries whatever the chunking, and hashes all of it', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(entry, {maxLength: 6}),
        fc.array(fc.integer({max: 3000, min: 1}), {maxLength: 40}),
        fc.nat({max: 2000}),
        async (entries, cuts, trailing) => {
          const tar = Buffer.concat([entryTar(entries), Buffer.alloc(trailing)])
          const whole = await gate(tar)
          const cut = await gate(tar, cuts)
          expect(cut.entries).to.deep.equal(whole.entries)
          expect(cut.diffId).to.equal(createHash('sha256').update(tar).digest('hex'))
          expect(cut.count).to.equal(entries.length)
          expect(whole.entries.map((line) => line.split(' ').at(-1))).to.deep.equal(
            entries.map(({content}) => createHash('sha256').update(content).digest('hex')),
          )
        },
      ),
      {numRuns: 200},
    )
  })

  it('refuses a header whose checksum is wrong, so GNU tar cannot resync on hidden headers', async () => {
    const tar = entryTar([
      {
        content: Buffer.from('x'),
        header: {gid: 0, mode: 0o644, mtime: 0, name: Buffer.from('a'), size: 0, typeflag: '0', uid: 0},
      },
    ])
    tar[0] ^= 1
    const error = await gate(tar).catch((error_: unknown) => error_)
    expect(error)
      .to.be.instanceOf(WafersError)
      .with.property('message', 'the layer is not a valid tar: a header has a wrong checksum at its start.')
  })

  it('refuses data on a link or directory entry, which tar readers could read differently', async () => {
    const header = encodeHeader({
      gid: 0,
      mode: 0o755,
      mtime: 0,
      name: Buffer.from('dir/'),
      size: 0,
      typeflag: '5',
      uid: 0,
    })
    const withSize = Buffer.from(header)
    withSize.write('00000001000\0', 124, 'latin1')
    withSize.fill(0x20, 148, 156)
    let sum = 0
    for (let i = 0; i < BLOCK; i++) sum += withSize[i]
    withSize.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1')
    const error = await gate(Buffer.concat([withSize, Buffer.alloc(BLOCK), Buffer.alloc(2 * BLOCK)])).catch(
      (error_: unknown) => error_,
    )
    expect(error)
      .to.be.instanceOf(WafersError)
      .with.property('message')
      .that.includes('"dir/" is a link, device or directory that claims to carry data')
  })
})
