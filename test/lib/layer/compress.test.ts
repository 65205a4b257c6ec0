// packLayer's compressor (src/lib/layer/compress.ts): what it writes is read by other tools' gzip
// and tar, and what it cannot vouch for is refused in a sentence.
import {expect} from 'chai'
import {execa} from 'execa'
import {createHash, randomBytes} from 'node:crypto'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {packLayer} from '../../../src/lib/layer/archive.js'

describe('the compressor of packed layers', function () {
  this.timeout(30_000)
  let dir: string
  let data: string
  const path0 = process.env.PATH

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-compress-'))
    data = path.join(dir, 'data')
    await fs.mkdir(path.join(data, 'etc', 'deep'), {recursive: true})
    await fs.writeFile(path.join(data, 'etc', 'hostname'), 'box\n')
    // Enough to span many of igzip's blocks and the pipe's buffers.
    await fs.writeFile(path.join(data, 'etc', 'deep', 'big'), Buffer.alloc(3 * 1024 * 1024 + 17, 'wafers '))
    await fs.symlink('hostname', path.join(data, 'etc', 'name'))
  })

  afterEach(async function () {
    process.env.PATH = path0
    await fs.rm(dir, {force: true, recursive: true})
  })

  /** A program named `name` on a PATH of its own, ahead of the rest, running `script` (sh). */
  const shadow = async (name: string, script: string) => {
    const bin = path.join(dir, 'bin')
    await fs.mkdir(bin, {recursive: true})
    await fs.writeFile(path.join(bin, name), `#!/bin/sh\n${script}\n`, {mode: 0o755})
    process.env.PATH = `${bin}:${path0}`
  }

  it('writes a gzip blob that gzip and GNU tar read, with the digest, size and diffID it reports', async function () {
    const output = path.join(dir, 'layer.tar.gz')
    const packed = await packLayer(data, output)
    const blob = await fs.readFile(output)
    expect(packed.size).to.equal(blob.length)
    expect(packed.digest).to.equal(`sha256:${createHash('sha256').update(blob).digest('hex')}`)
    const tar = await execa('gzip', ['-dc', output], {encoding: 'buffer'})
    expect(packed.diffId).to.equal(`sha256:${createHash('sha256').update(tar.stdout).digest('hex')}`)
    const listed = await execa('tar', ['-tvzf', output])
    expect(listed.stdout).to.match(/^-rw-r--r-- 0\/0 +3145745 .* etc\/deep\/big$/m)
    expect(listed.stdout).to.match(/ etc\/name -> hostname$/m)
    // The same files give the same bytes (the cache and reproducible pushes stand on it).
    const again = await packLayer(data, path.join(dir, 'again.tar.gz'))
    expect(again.digest).to.equal(packed.digest)
  })

  it('refuses a blob whose gzip trailer does not name the tar that went in, though the compressor exited 0', async function () {
    await shadow('igzip', '/usr/bin/igzip "$@" | head -c -8')
    const error = await packLayer(data, path.join(dir, 'cut.tar.gz')).catch((error_: unknown) => error_)
    expect(error).to.be.an('error')
    expect((error as Error).message).to.equal(
      `compressing the layer of ${data} failed: igzip wrote a blob that does not end with the tar it was given.`,
    )
  })

  it('says which package to install when igzip is not there', async function () {
    process.env.PATH = path.join(dir, 'nowhere')
    const error = await packLayer(data, path.join(dir, 'none.tar.gz')).catch((error_: unknown) => error_)
    expect((error as Error).message).to.equal(
      'packing a layer needs igzip, which is not on PATH: install the isal package.',
    )
  })

  it('says the disk is full when the blob does not fit, in one sentence naming the file', async function () {
    // A file system of 1 MiB for the blob (the tests run in a mount namespace of their own), and
    // data gzip cannot shrink.
    const small = path.join(dir, 'small')
    await fs.mkdir(small)
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small])
    try {
      await fs.writeFile(path.join(data, 'noise'), randomBytes(4 * 1024 * 1024))
      const output = path.join(small, 'full.tar.gz')
      const error = await packLayer(data, output).catch((error_: unknown) => error_)
      expect((error as Error).message).to.equal(`${output} cannot be written: no space is left on its file system.`)
    } finally {
      await execa('umount', [small])
    }
  })

  it('says so when the compressor fails, after reading all of the tar or before reading any', async function () {
    for (const script of ['cat >/dev/null; exit 3', 'exit 3']) {
      await shadow('igzip', script)
      const output = path.join(dir, `failed-${script.length}.tar.gz`)
      const error = await packLayer(data, output).catch((error_: unknown) => error_)
      expect((error as Error).message, script).to.equal(`compressing the layer of ${data} failed: igzip exited with 3.`)
    }
  })
})
