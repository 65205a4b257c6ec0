import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {hasStackTrace, nspawnIn, requireMounts, said, Sandbox, snapshot} from '../helpers/sandbox.js'
import {closedPort} from '../helpers/net.js'

const plugin = fileURLToPath(new URL('../../plugins/debian', import.meta.url))

describe('wafers-plugin-debian-arch, linked as a user would (real debootstrap, real mounts)', function () {
  let box: Sandbox

  beforeEach(async function () {
    requireMounts(this)
    box = await Sandbox.create()
    const run = await box.run(['plugins', 'link', '--no-install', plugin])
    expect(run.exitCode, run.stderr).to.equal(0)
  })

  afterEach(async function () {
    await box?.cleanup()
  })

  it('offers debootstrap and pacstrap', async function () {
    const run = await box.run(['seeders', '--json'])
    expect(run.exitCode, run.stderr).to.equal(0)
    const offered = (JSON.parse(run.stdout) as Array<{name: string; plugin: string}>).filter(
      (entry) => entry.plugin === 'wafers-plugin-debian-arch',
    )
    expect(offered.map((entry) => entry.name)).to.deep.equal(['debootstrap', 'pacstrap'])
  })

  it('says which package to install when pacstrap is missing, and creates nothing', async function () {
    await fs.mkdir(box.wafers)
    const run = await box.run(['create', 'arch', '--seed', 'pacstrap', '--', 'base', '--ignore', 'linux'], {
      PATH: path.join(box.root, 'empty-path'),
    })
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include(
      'seeder pacstrap (wafers-plugin-debian-arch) failed: pacstrap is not installed or not on PATH; install the arch-install-scripts package (apt-get install arch-install-scripts, or pacman -S arch-install-scripts).',
    )
    expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
    expect(await fs.readdir(box.wafers)).to.deep.equal([])
  })

  it('says which package to install when debootstrap is missing', async function () {
    const run = await box.run(['create', 'debian', '--seed', 'debootstrap'], {PATH: path.join(box.root, 'empty-path')})
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include('debootstrap is not installed or not on PATH; install the debootstrap package')
  })

  it('reports an unreachable mirror as a network failure, and leaves no wafer', async function () {
    await fs.mkdir(box.wafers)
    const mirror = `http://127.0.0.1:${await closedPort()}/debian`
    const run = await box.run(['create', 'debian', '--seed', 'debootstrap', '--', 'bookworm', mirror])
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include(
      `failed: network failure: cannot reach the mirror ${mirror} (Connection refused); check the network or give another mirror.`,
    )
    expect(await fs.readdir(box.wafers)).to.deep.equal([])
  })

  it('debootstraps a minimal Debian base; useradd in a child stack changes the child only', async function () {
    this.timeout(30 * 60 * 1000)
    const started = Date.now()
    const create = await box.run(['create', 'debian', '--seed', 'debootstrap', '--', 'bookworm', '--variant=minbase'])
    const seconds = ((Date.now() - started) / 1000).toFixed(1)
    const how = create.stderr.includes('unpacking the root file system cached') ? 'from the cache' : 'debootstrapped'
    console.log(`      (bookworm minbase ${how} in ${seconds} s)`)
    expect(create.exitCode, create.stderr.split('\n').slice(-5).join('\n')).to.equal(0)
    expect(create.stdout).to.equal(`created base wafer debian seeded with debootstrap at ${box.data('debian')}`)
    expect(await fs.readFile(box.data('debian', 'etc', 'debian_version'), 'utf8')).to.match(/^12\./)
    // No trace of the host that ran debootstrap: its name and resolver stay out of every container.
    for (const name of ['hostname', 'resolv.conf']) {
      expect(await fs.readFile(box.data('debian', 'etc', name), 'utf8'), name).to.equal('')
    }

    const base = await snapshot(box.data('debian'))
    const passwd = await fs.readFile(box.data('debian', 'etc', 'passwd'), 'utf8')

    expect((await box.run(['stack', 'jesse', 'debian'])).exitCode).to.equal(0)
    const nspawn = await nspawnIn(box.stack('jesse'), ['useradd', '--create-home', '--shell', '/bin/bash', 'jesse'])
    expect(nspawn.exitCode, nspawn.stderr).to.equal(0)
    const unstack = await box.run(['unstack', 'jesse'])
    expect(unstack.exitCode, unstack.stderr).to.equal(0)

    expect(await fs.readFile(box.data('jesse', 'etc', 'passwd'), 'utf8')).to.match(
      /^jesse:x:1000:1000::\/home\/jesse:\/bin\/bash$/m,
    )
    expect((await fs.stat(box.data('jesse', 'home', 'jesse'))).uid).to.equal(1000)
    expect(await fs.readFile(box.data('debian', 'etc', 'passwd'), 'utf8')).to.equal(passwd)
    expect(await snapshot(box.data('debian'))).to.deep.equal(base)

    // The same request against the same mirror is unpacked from the cache: the same tree, quickly.
    const again = Date.now()
    const second = await box.run(['create', 'debian2', '--seed', 'debootstrap', '--', 'bookworm', '--variant=minbase'])
    console.log(`      (bookworm minbase again, from the cache, in ${((Date.now() - again) / 1000).toFixed(1)} s)`)
    expect(second.exitCode, second.stderr.split('\n').slice(-5).join('\n')).to.equal(0)
    expect(second.stderr).to.include(
      'unpacking the root file system cached in /var/cache/wafers/debootstrap/rootfs/rootfs-',
    )
    expect(await snapshot(box.data('debian2'))).to.deep.equal(base)
  })
})
