import {expect} from 'chai'
import {execa} from 'execa'
import {closeSync, promises as fs, mkdirSync, openSync} from 'node:fs'
import path from 'node:path'

import {Sandbox, hasStackTrace, said, snapshot, useSandbox} from '../helpers/sandbox.js'
import {loadXattr} from '../../src/lib/host/xattr.js'
import {enterableSid, inSid, inSidMachine, mountedBySystemd, SID_ROOT} from '../helpers/systemd.js'
import {treeListing} from '../helpers/tree.js'
import {makeUmociImage} from '../helpers/umoci.js'

// Overlay markers are hidden by the mount that reads them and shown by the other (wafers' mounts
// read trusted.overlay.*, systemd's user.overlay.*): the trees are compared without either.
const noMarkers = (lines: string[]) => lines.map((line) => line.replaceAll(/ (trusted|user)\.overlay\.[^ ]+/g, ''))

describe('stacks as systemd .mstack directories (systemd 262 from Debian sid)', function () {
  this.timeout(900_000)
  let box: Sandbox
  let leave: (() => Promise<void>) | undefined
  useSandbox((made) => {
    box = made
  })

  beforeEach(async () => {
    leave = await enterableSid([box.root])
  })

  afterEach(async () => {
    await leave?.()
  })

  /** A busybox base with a file to delete, a directory to make opaque, hard links, an xattr and a capability. */
  async function base(): Promise<void> {
    const seeded = await box.run(['create', 'bb', '--seed', 'busybox'])
    expect(seeded.exitCode, seeded.stderr).to.equal(0)
    await fs.writeFile(box.data('bb', 'gone'), 'deleted above\n')
    await fs.mkdir(box.data('bb', 'o'))
    await fs.writeFile(box.data('bb', 'o', 'hidden'), 'hidden above\n')
    await fs.writeFile(box.data('bb', 'hl1'), 'linked\n')
    await fs.link(box.data('bb', 'hl1'), box.data('bb', 'hl2'))
    await execa('setfattr', ['-n', 'user.note', '-v', 'kept', box.data('bb', 'hl1')])
    await fs.copyFile(box.data('bb', 'bin', 'busybox'), box.data('bb', 'ping'))
    await execa('setcap', ['cap_net_raw+ep', box.data('bb', 'ping')])
  }

  it('systemd-mstack mounts the same tree wafers stacks: whiteouts, opaque directories, copy-ups, links, xattrs, capabilities', async () => {
    await base()
    const stacked = await box.run(['stack', 'kid', 'bb'])
    expect(stacked.exitCode, stacked.stderr).to.equal(0)
    // Changes made in a running container on wafers' mount: the kernel writes the whiteout, the
    // opaque directory (in its trusted form) and the copy-ups.
    const changed = await execa(
      'systemd-nspawn',
      [
        '--register=no',
        '--keep-unit',
        '--quiet',
        '-D',
        box.stack('kid'),
        'sh',
        '-c',
        'rm /gone && rm -r /o && mkdir /o && echo new > /o/fresh && echo more >> /hl1 && mkdir -p /srv/app && echo hi > /srv/app/x',
      ],
      {reject: false, stdin: 'ignore'},
    )
    expect(changed.exitCode, changed.stderr).to.equal(0)
    const byWafers = await treeListing(box.stack('kid'))
    expect(byWafers.some((line) => line.startsWith('o/hidden '))).to.equal(false)
    const unstacked = await box.run(['unstack', 'kid'])
    expect(unstacked.exitCode, unstacked.stderr).to.equal(0)

    const written = await box.run(['stack', 'kid', '--mstack'])
    expect(written.exitCode, written.stderr).to.equal(0)
    const mstack = path.join(box.stacks, 'kid.mstack')
    expect(written.stdout).to.include(`2 wafers stacked at ${mstack}`)
    expect(await box.mountOf('kid')).to.equal(undefined)
    expect(await fs.readlink(path.join(mstack, 'layer@0'))).to.equal(box.data('bb'))
    expect(await fs.readlink(path.join(mstack, 'rw'))).to.equal(path.join(box.wafers, 'kid'))

    const bySystemd = await mountedBySystemd(box.root, mstack)
    expect(noMarkers(bySystemd)).to.deep.equal(noMarkers(byWafers))
    expect(bySystemd.find((line) => line.startsWith('ping '))).to.include('security.capability=')
    expect(bySystemd.find((line) => line.startsWith('hl2 '))).to.include('user.note=')
  })

  it('systemd-nspawn --mstack runs a machine on it, and what it changes lands in the top wafer, read back alike by wafers', async () => {
    await base()
    expect((await box.run(['stack', 'kid', 'bb', '--mstack'])).exitCode).to.equal(0)
    const mstack = path.join(box.stacks, 'kid.mstack')
    const ran = await inSidMachine(mstack, 'rm -r /o && mkdir /o && echo in-systemd > /o/made && rm /gone')
    expect(ran.exitCode, ran.stderr).to.equal(0)
    expect(await fs.readFile(box.data('kid', 'o', 'made'), 'utf8')).to.equal('in-systemd\n')
    expect(await fs.readFile(box.data('bb', 'o', 'hidden'), 'utf8')).to.equal('hidden above\n')

    // systemd marked /o opaque in the user form only; wafers' own mount must hide o/hidden too.
    const bySystemd = await mountedBySystemd(box.root, mstack)
    const unstacked = await box.run(['unstack', 'kid'])
    expect(unstacked.exitCode, unstacked.stderr).to.equal(0)
    expect(unstacked.stdout).to.include(`unstacked ${mstack}`)
    await fs.access(mstack).then(
      () => expect.fail(`${mstack} is still there`),
      () => {},
    )
    const stacked = await box.run(['stack', 'kid'])
    expect(stacked.exitCode, stacked.stderr).to.equal(0)
    const byWafers = await treeListing(box.stack('kid'))
    expect(byWafers.some((line) => line.startsWith('o/hidden '))).to.equal(false)
    expect(noMarkers(byWafers)).to.deep.equal(noMarkers(bySystemd))
  })

  it('refuses what the mount refuses, and a stack systemd has mounted is in use for unstack, rm and stack', async () => {
    await base()
    await box.wafer('kid', {parent: 'bb'})
    expect((await box.run(['stack', 'kid', '--mstack'])).exitCode).to.equal(0)
    const mstack = path.join(box.stacks, 'kid.mstack')
    const before = await snapshot(box.root)

    const twice = await box.run(['stack', 'kid', '--mstack'])
    expect(twice.exitCode).to.equal(0)
    expect(twice.stdout).to.include('already stacked')
    const mounted = await box.run(['stack', 'kid'])
    expect(mounted.exitCode).to.not.equal(0)
    expect(said(mounted.stderr)).to.include(`kid is stacked as ${mstack} for systemd to mount`)
    const child = await box.run(['stack', 'grandkid', 'kid'])
    expect(child.exitCode).to.not.equal(0)
    expect(said(child.stderr)).to.include('kid, below grandkid, is the writable top of the stack at')
    const removed = await box.run(['rm', '--yes', 'kid'])
    expect(removed.exitCode).to.not.equal(0)
    expect(said(removed.stderr)).to.include(`wafer kid is stacked at ${mstack}; unstack it first.`)
    expect(said(removed.stderr)).to.include('wafers unstack kid')
    const listed = JSON.parse((await box.run(['list', '--json'])).stdout) as Array<{
      mountpoint: null | string
      name: string
      stacked: boolean
    }>
    expect(listed.find((wafer) => wafer.name === 'kid')).to.include({mountpoint: mstack, stacked: true})
    expect(await snapshot(box.root)).to.deep.equal(before)

    const at = path.join(box.root, 'by-systemd')
    await fs.mkdir(at)
    const up = await inSid(['systemd-mstack', '--mount', mstack, at])
    expect(up.exitCode, up.stderr).to.equal(0)
    try {
      const busy = await box.run(['unstack', 'kid'])
      expect(busy.exitCode).to.not.equal(0)
      expect(said(busy.stderr)).to.include(`stack kid (${mstack}) is mounted by systemd at`)
      expect(hasStackTrace(busy.stderr)).to.equal(false)
      await fs.access(path.join(mstack, 'rw'))
    } finally {
      await inSid(['systemd-mstack', '--umount', at])
    }

    const depth = await box.run(['stack', 'nope', 'missing', '--mstack'])
    expect(depth.exitCode).to.not.equal(0)
    expect(said(depth.stderr)).to.include('missing')
    await fs.access(path.join(box.stacks, 'nope.mstack')).then(
      () => expect.fail('a refused stack left its .mstack'),
      () => {},
    )
  })
})

describe('image settings for systemd-nspawn -M (systemd 262 from Debian sid)', function () {
  this.timeout(900_000)
  let box: Sandbox
  let leave: (() => Promise<void>) | undefined
  useSandbox((made) => {
    box = made
  })

  afterEach(async () => {
    await leave?.()
  })

  it('pull writes NAME.nspawn, and systemd-nspawn -M NAME runs the image command with its environment and working directory', async () => {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'v1')
    await execa('umoci', [
      'config',
      '--image',
      `${layout}:v1`,
      '--config.entrypoint',
      '/bin/sh',
      '--config.entrypoint',
      '-c',
      '--config.cmd',
      'echo "$GREETING from $PWD"; echo "two words" > /data/ran',
      '--config.env',
      'GREETING=hello world',
      '--config.env',
      'PATH=/bin:/usr/bin',
      '--config.workingdir',
      '/data',
      '--config.user',
      'root',
      '--config.stopsignal',
      'SIGQUIT',
    ])
    const pulled = await box.run(['pull', `oci:${layout}:v1`, 'img'])
    expect(pulled.exitCode, pulled.stderr).to.equal(0)
    const settings = await fs.readFile(path.join(box.stacks, 'img.nspawn'), 'utf8')
    expect(settings)
      .to.include('[Exec]')
      .and.include('Environment="GREETING=hello world"')
      .and.include('KillSignal=SIGQUIT')
    expect((await box.run(['stack', 'img', '--mstack'])).exitCode).to.equal(0)

    leave = await enterableSid([box.root])
    await execa('mount', ['--bind', box.stacks, path.join(SID_ROOT, 'var/lib/machines')])
    const ran = await inSid(['systemd-nspawn', '--register=no', '--keep-unit', '--quiet', '-M', 'img'])
    expect(ran.exitCode, ran.stderr).to.equal(0)
    expect(ran.stdout.trim()).to.equal('hello world from /data')
    expect(await fs.readFile(box.data('img', 'data', 'ran'), 'utf8')).to.equal('two words\n')

    const skipped = await box.run(['pull', '--no-settings', `oci:${layout}:v1`, 'other'])
    expect(skipped.exitCode, skipped.stderr).to.equal(0)
    await fs.access(path.join(box.stacks, 'other.nspawn')).then(
      () => expect.fail('--no-settings wrote other.nspawn'),
      () => {},
    )
  })

  it('never replaces a NAME.nspawn the user wrote, and rm takes away only the one wafers wrote', async () => {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'v1')
    await fs.mkdir(box.stacks, {recursive: true})
    await fs.writeFile(path.join(box.stacks, 'mine.nspawn'), '[Exec]\nParameters=/bin/true\n')
    const refused = await box.run(['pull', `oci:${layout}:v1`, 'mine'])
    expect(refused.exitCode).to.not.equal(0)
    expect(said(refused.stderr)).to.include(
      `${path.join(box.stacks, 'mine.nspawn')} is not one wafers wrote; it is left as it is.`,
    )
    expect(await fs.readFile(path.join(box.stacks, 'mine.nspawn'), 'utf8')).to.equal('[Exec]\nParameters=/bin/true\n')

    expect((await box.run(['pull', `oci:${layout}:v1`, 'img'])).exitCode).to.equal(0)
    expect((await box.run(['rm', '--yes', 'img'])).exitCode).to.equal(0)
    await fs.access(path.join(box.stacks, 'img.nspawn')).then(
      () => expect.fail('rm left img.nspawn'),
      () => {},
    )
  })
})

describe('.mstack directories someone else put in $STACKS', function () {
  let box: Sandbox
  useSandbox((made) => {
    box = made
  })

  it('unstack follows no link at NAME.mstack, removes nothing through it, and refuses one holding more than wafers wrote', async () => {
    await box.wafer('base')
    const victim = path.join(box.root, 'victim')
    await fs.mkdir(victim)
    await fs.symlink(path.join(box.wafers, 'base'), path.join(victim, 'rw'))
    await fs.mkdir(box.stacks, {recursive: true})
    await fs.symlink(victim, path.join(box.stacks, 'base.mstack'))
    const before = await snapshot(box.root)
    const linked = await box.run(['unstack', 'base'])
    expect(linked.stdout).to.include('nothing stacked at')
    expect(await snapshot(box.root)).to.deep.equal(before)

    await fs.unlink(path.join(box.stacks, 'base.mstack'))
    expect((await box.run(['stack', 'base', '--mstack'])).exitCode).to.equal(0)
    await fs.writeFile(path.join(box.stacks, 'base.mstack', 'notes'), 'mine\n')
    const kept = await snapshot(box.root)
    const refused = await box.run(['unstack', 'base'])
    expect(refused.exitCode).to.not.equal(0)
    expect(said(refused.stderr)).to.include('holds more than wafers wrote (notes); nothing was removed.')
    expect(await snapshot(box.root)).to.deep.equal(kept)
  })

  it('marks a 1,500-deep tree and a directory whose name is not UTF-8 for systemd, in one sentence or not at all', async () => {
    await box.wafer('base')
    await box.wafer('top', {parent: 'base'})
    let deep = box.data('top')
    for (let i = 0; i < 1500; i++) deep = path.join(deep, 'd')
    await execa('mkdir', ['-p', deep])
    await execa('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', deep])
    const odd = Buffer.concat([Buffer.from(`${box.data('top')}/`), Buffer.from([0xff])])
    mkdirSync(odd)
    mkdirSync(Buffer.concat([odd, Buffer.from('/o')]))
    // The xattr binding takes strings: reach the oddly named directory through a descriptor.
    const fd = openSync(Buffer.concat([odd, Buffer.from('/o')]), 'r')
    try {
      const xattr = await loadXattr()
      await xattr.setAttribute(`/proc/self/fd/${fd}/.`, 'trusted.overlay.opaque', 'y')
      const written = await box.run(['stack', 'top', '--mstack'])
      expect(written.exitCode, written.stderr).to.equal(0)
      expect(String(await xattr.getAttribute(`/proc/self/fd/${fd}/.`, 'user.overlay.opaque'))).to.equal('y')
      expect(String(await xattr.getAttribute(deep, 'user.overlay.opaque'))).to.equal('y')
    } finally {
      closeSync(fd)
    }
  })
})
