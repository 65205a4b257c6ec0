import {expect} from 'chai'
import fc from 'fast-check'
import {createHash} from 'node:crypto'
import {Writable} from 'node:stream'

import {WafersError} from '../../../src/lib/errors.js'
import {compressionOf} from '../../../src/lib/layer/archive.js'
import {gateLayer} from '../../../src/lib/layer/tar/gate.js'
import {
  BLOCK,
  EntryHeader,
  encodeHeader,
  padded,
  parseHeader,
  parsePax,
  paxRecord,
} from '../../../src/lib/layer/tar/header.js'

/** Runs the gate over `tar` cut into the given chunk sizes; what it passed on, and what it found. */
async function gate(tar: Buffer, cuts: number[] = []) {
  const chunks: Buffer[] = []
  let offset = 0
  for (const cut of cuts) {
    if (offset >= tar.length) break
    chunks.push(tar.subarray(offset, offset + cut))
    offset += cut
  }

  if (offset < tar.length) chunks.push(tar.subarray(offset))
  const out: Buffer[] = []
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      out.push(Buffer.from(chunk))
      callback()
    },
  })
  const hash = createHash('sha256')
  const found = await gateLayer(
    (async function* () {
      yield* chunks
    })(),
    sink,
    {hash, layer: 'the layer', stopped: new Promise(() => {})},
  )
  return {diffId: hash.digest('hex'), found, out: Buffer.concat(out)}
}

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
    xattrs: fc.array(
      fc.tuple(
        fc.stringMatching(/^user\.[a-z]{1,10}$/),
        fc.uint8Array({maxLength: 40}).map((bytes) => Buffer.from(bytes)),
      ),
      {maxLength: 2},
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
        return length === record.length && parsePax(record)?.get('path')?.toString() === value
      }),
      {numRuns: 500},
    )
  })

  it('reads back every header it writes, with long names and big numbers in pax', () => {
    fc.assert(
      fc.property(entry, ({content, header}) => {
        const blocks = encodeHeader({...header, size: content.length})
        const last = parseHeader(blocks.subarray(blocks.length - BLOCK))!
        expect(last.mode).to.equal(header.mode)
        expect(last.size).to.equal(content.length)
        if (blocks.length === BLOCK) {
          expect(last.name.equals(header.name)).to.equal(true)
          expect([last.uid, last.gid, last.mtime]).to.deep.equal([header.uid, header.gid, header.mtime])
        } else {
          const pax = parseHeader(blocks.subarray(0, BLOCK))!
          expect(pax.typeflag).to.equal('x')
          const records = parsePax(blocks.subarray(BLOCK, BLOCK + pax.size))!
          expect((records.get('path') ?? last.name).equals(header.name)).to.equal(true)
          expect(Number(records.get('uid') ?? last.uid)).to.equal(header.uid)
        }
      }),
      {numRuns: 300},
    )
  })

  it('passes a layer on byte for byte whatever the chunking, and hashes all of it', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(entry, {maxLength: 6}),
        fc.array(fc.integer({max: 3000, min: 1}), {maxLength: 40}),
        fc.nat({max: 2000}),
        async (entries, cuts, trailing) => {
          const tar = Buffer.concat([entryTar(entries), Buffer.alloc(trailing)])
          const whole = await gate(tar)
          const cut = await gate(tar, cuts)
          const end = tar.length - trailing
          expect(cut.out.equals(whole.out)).to.equal(true)
          expect(whole.out.equals(tar.subarray(0, end))).to.equal(true)
          expect(cut.diffId).to.equal(createHash('sha256').update(tar).digest('hex'))
          expect(cut.found.entries).to.equal(entries.length)
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
      .with.property(
        'message',
        'the layer is not a valid layer tar: a header has a wrong checksum or a bad number at its start.',
      )
  })

  it('refuses data on a link or directory entry, which GNU tar and the gate could read differently', async () => {
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
