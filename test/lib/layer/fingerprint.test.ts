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
    expect(await changes(() => fs.writeFile(odd, 'ODD\n')), 'a file of an odd name').to.equal(true)
    // What the symlink points at is not the wafer's: changing it changes nothing.
    expect(await changes(() => fs.writeFile(path.join(dir, 'outside'), 'x'))).to.equal(false)
  })

  it("does not depend on the caller's environment", async function () {
    const first = await layerFingerprint(data)
    const saved = {...process.env}
    try {
      Object.assign(process.env, {LANG: 'de_DE.UTF-8', LC_ALL: 'de_DE.UTF-8', POSIXLY_CORRECT: '1', TZ: 'Asia/Tokyo'})
      expect(await layerFingerprint(data)).to.equal(first)
    } finally {
      for (const name of ['LANG', 'LC_ALL', 'POSIXLY_CORRECT', 'TZ']) delete process.env[name]
      Object.assign(process.env, saved)
    }
  })

  const refusal = async (of: string) => {
    const error = await layerFingerprint(of).then(
      () => undefined,
      (error_: unknown) => error_ as Error,
    )
    expect(error, `a fingerprint of ${of}`).to.be.instanceOf(Error)
    return error!.message
  }

  it('refuses a wafer directory that is a symlink or a file, or is not there, in a sentence', async function () {
    const link = path.join(dir, 'link')
    await fs.symlink(data, link)
    expect(await refusal(link)).to.equal(
      `cannot tell whether ${link} changed: it is not a directory; try again once nothing writes to it.`,
    )
    const file = path.join(data, 'etc', 'hostname')
    expect(await refusal(file)).to.equal(
      `cannot tell whether ${file} changed: it is not a directory; try again once nothing writes to it.`,
    )
    const gone = path.join(dir, 'gone')
    expect(await refusal(gone)).to.equal(
      `cannot tell whether ${gone} changed: it is not there; try again once nothing writes to it.`,
    )
  })

  it('refuses a find that does not print what GNU find prints', async function () {
    // A find whose times are whole seconds would miss a change within the second.
    const bin = path.join(dir, 'bin')
    await fs.mkdir(bin)
    await fs.writeFile(path.join(bin, 'find'), "#!/bin/sh\nprintf 'd 755 2 3 0 0 4096 1700000000 1700000000 \\000'\n", {
      mode: 0o755,
    })
    const path0 = process.env.PATH
    process.env.PATH = `${bin}:${path0}`
    try {
      expect(await refusal(data)).to.equal(
        `cannot tell whether ${data} changed: ${bin}/find does not print what GNU find prints; try again once nothing writes to it.`,
      )
    } finally {
      process.env.PATH = path0
    }
  })
})
