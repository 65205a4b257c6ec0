// layerFingerprint (src/lib/layer/archive.ts), which decides whether push may reuse a cached blob:
// every change that would change the packed layer changes it, a read does not, and it never
// follows a symlink or blocks on a FIFO of the wafer's.
import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {layerFingerprint} from '../../../src/lib/layer/archive.js'

describe('the fingerprint of a wafer', function () {
  this.timeout(30_000)
  let dir: string
  let data: string

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-fingerprint-'))
    data = path.join(dir, 'data')
    await fs.mkdir(path.join(data, 'etc', 'deep'), {recursive: true})
    await fs.writeFile(path.join(data, 'etc', 'hostname'), 'box\n')
    await fs.writeFile(path.join(data, 'etc', 'deep', 'file'), 'one\n')
    await fs.symlink('hostname', path.join(data, 'etc', 'name'))
  })

  afterEach(async function () {
    await fs.rm(dir, {force: true, recursive: true})
  })

  /** Whether `change` (run on the wafer) changes its fingerprint. */
  const changes = async (change: () => Promise<unknown>) => {
    const before = await layerFingerprint(data)
    await change()
    return (await layerFingerprint(data)) !== before
  }

  it('stays the same while nothing changes, reads included', async function () {
    const first = await layerFingerprint(data)
    expect(first).to.match(/^sha256:[0-9a-f]{64}$/)
    // A read may set the atime (relatime), which changes no ctime.
    await fs.readFile(path.join(data, 'etc', 'hostname'))
    await fs.readdir(path.join(data, 'etc'))
    expect(await layerFingerprint(data)).to.equal(first)
  })

  it('changes with every change packLayer would see', async function () {
    const file = path.join(data, 'etc', 'deep', 'file')
    expect(await changes(() => fs.writeFile(file, 'two\n')), 'same size, new content').to.equal(true)
    expect(await changes(() => fs.chmod(file, 0o600)), 'mode').to.equal(true)
    expect(await changes(() => fs.chown(file, 1000, 1000)), 'owner').to.equal(true)
    expect(await changes(() => execa('touch', ['-m', '-d', '2021-07-08 09:10:11', file])), 'mtime').to.equal(true)
    expect(await changes(() => execa('setfattr', ['-n', 'user.note', '-v', 'x', file])), 'xattr').to.equal(true)
    expect(await changes(() => fs.rename(file, `${file}2`)), 'a rename').to.equal(true)
    expect(await changes(() => fs.link(`${file}2`, path.join(data, 'etc', 'linked'))), 'a hard link').to.equal(true)
    expect(await changes(() => fs.rm(path.join(data, 'etc', 'linked'))), 'a removal').to.equal(true)
    expect(await changes(() => execa('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', data])), 'root mark').to.equal(
      true,
    )
  })

  it('takes any name, never follows a symlink and never opens a FIFO', async function () {
    const odd = Buffer.concat([Buffer.from(`${data}/`), Buffer.from([0x6e, 0x0a, 0xff, 0x20, 0x2d])])
    await fs.writeFile(odd, 'odd\n')
    await fs.symlink(dir, path.join(data, 'up')) // followed, it would walk the wafer again and more
    await execa('mkfifo', [path.join(data, 'fifo')])
    const first = await layerFingerprint(data)
    expect(await changes(() => fs.writeFile(odd, 'ODD\n')), 'a file of an odd name').to.equal(true)
    // What the symlink points at is not the wafer's: changing it changes nothing.
    expect(await changes(() => fs.writeFile(path.join(dir, 'outside'), 'x'))).to.equal(false)
    expect(first).to.not.equal(await layerFingerprint(data))
  })

  it('refuses in a sentence when the wafer is not there to read', async function () {
    const error = await layerFingerprint(path.join(dir, 'gone')).catch((error_: unknown) => error_ as Error)
    expect(error).to.be.instanceOf(Error)
    expect((error as Error).message).to.equal(
      `cannot tell whether ${path.join(dir, 'gone')} changed: part of it went away while it was read; try again once nothing writes to it.`,
    )
  })
})
