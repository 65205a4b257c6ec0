import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {buffer} from 'node:stream/consumers'

import {growingBlob} from '../../../src/lib/oci/stream.js'

// Writes argv[1] (its first argv[4] bytes, when given) into argv[2] in four parts, a pause between
// them, then renames it to argv[3] (unless '-'): as skopeo's OCI layout destination writes a blob.
const WRITER = `
import os, sys, time
data = open(sys.argv[1], 'rb').read()
if len(sys.argv) > 4: data = data[:int(sys.argv[4])]
quarter = len(data) // 4 + 1
with open(sys.argv[2], 'wb') as out:
    for i in range(4):
        out.write(data[i * quarter:(i + 1) * quarter]); out.flush(); time.sleep(0.15)
if len(sys.argv) > 3 and sys.argv[3] != '-': os.rename(sys.argv[2], sys.argv[3])
`

describe('pull: a blob read as skopeo writes it', function () {
  this.timeout(20_000)
  let dir: string
  let gzipped: Buffer

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-stream-'))
    // Content made by gzip itself, a few hundred KiB.
    const plain = Buffer.from(Array.from({length: 40_000}, (_, i) => `line ${i}\n`).join(''))
    await fs.writeFile(path.join(dir, 'plain'), plain)
    gzipped = Buffer.from((await execa('gzip', ['-c', '-n', path.join(dir, 'plain')], {encoding: 'buffer'})).stdout)
    await fs.writeFile(path.join(dir, 'source.gz'), gzipped)
    await fs.mkdir(path.join(dir, 'layout'))
  })

  afterEach(async function () {
    await fs.rm(dir, {force: true, recursive: true})
  })

  const descriptor = () => ({digest: `sha256:${'0'.repeat(64)}`, mediaType: 'x', size: gzipped.length})

  /** WRITER writing `temp` (with `args`), and growingBlob reading it, finished when WRITER is. */
  async function downloading(temp: string, ...args: string[]) {
    const writer = execa('python3', [
      '-c',
      WRITER,
      path.join(dir, 'source.gz'),
      path.join(dir, 'layout', temp),
      ...args,
    ])
    let finished = false
    void writer.finally(() => {
      finished = true
    })
    const blob = await growingBlob(path.join(dir, 'layout'), descriptor(), {
      finished: () => finished,
      said: 'none',
      signal: new AbortController().signal,
    })
    return {blob, writer}
  }

  it('reads every byte as the file grows, through the rename, and sees gzip in its first bytes', async function () {
    const {blob, writer} = await downloading('oci-put-blob123', path.join(dir, 'layout', 'done'))
    expect(blob?.compression).to.equal('gzip')
    const read = await buffer(blob!.input)
    await writer
    expect(read.equals(gzipped)).to.equal(true)
  })

  it('fails the stream, naming how far it got, when the download ends short', async function () {
    const {blob} = await downloading('oci-put-blob7', '-', String(Math.floor(gzipped.length / 2)))
    const failed = await buffer(blob!.input).then(
      () => 'read all',
      (error: Error) => error.message,
    )
    expect(failed).to.match(new RegExp(`^the download ended after \\d+ of its ${gzipped.length} bytes$`))
  })

  /** What growingBlob gives for the layout when the download ends 200 ms in. */
  async function blobOnceEnded() {
    let finished = false
    setTimeout(() => {
      finished = true
    }, 200)
    return growingBlob(path.join(dir, 'layout'), descriptor(), {
      finished: () => finished,
      said: 'none',
      signal: new AbortController().signal,
    })
  }

  it('takes no link for the file, and gives up once the download ended without one', async function () {
    await fs.symlink(path.join(dir, 'source.gz'), path.join(dir, 'layout', 'oci-put-blob9'))
    expect(await blobOnceEnded()).to.equal(undefined)
  })

  it('never blocks on a FIFO in the place of the file, and gives up once the download ended', async function () {
    await execa('mkfifo', [path.join(dir, 'layout', 'oci-put-blob7')])
    expect(await blobOnceEnded()).to.equal(undefined)
  })
})
