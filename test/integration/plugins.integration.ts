import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {readMountTable} from '../../src/lib/host/mounts.js'
import {hasStackTrace, requireMounts, said, Sandbox, snapshot} from '../helpers/sandbox.js'

const fixtures = fileURLToPath(new URL('../fixtures', import.meta.url))
const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))

interface Seen {
  event: string
  plugin: string
  seen: Record<string, unknown>
}

describe('plugins: the wafers:* hooks and seeders of linked plugins (real overlay mounts)', function () {
  let box: Sandbox
  let log: string

  beforeEach(async function () {
    requireMounts(this)
    box = await Sandbox.create()
    log = path.join(box.root, 'hooks.log')
    for (const plugin of ['plugin-alpha', 'plugin-beta']) {
      const run = await box.run(['plugins', 'link', '--no-install', path.join(fixtures, plugin)])
      expect(run.exitCode, run.stderr).to.equal(0)
    }
  })

  afterEach(async function () {
    await box?.cleanup()
  })

  const seen = async (): Promise<Seen[]> =>
    (await fs.readFile(log, 'utf8').catch(() => ''))
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => JSON.parse(line) as Seen)

  const mountsInBox = async () =>
    (await readMountTable()).filter((entry) => entry.mountpoint.startsWith(box.root + '/'))

  it('lives in WAFERS_DATA_DIR: linking wrote the plugin list there', async function () {
    const list = JSON.parse(await fs.readFile(path.join(box.root, 'plugins', 'package.json'), 'utf8'))
    expect(list.oclif.plugins.map((plugin: {name: string}) => plugin.name)).to.deep.equal([
      'wafers-plugin-test-alpha',
      'wafers-plugin-test-beta',
    ])
  })

  it('looks for plugins in /usr/local/lib/wafers whoever runs it, unless WAFERS_DATA_DIR says otherwise', async function () {
    const where = async (env: Record<string, string | undefined>) => {
      const run = await execa(process.execPath, [bin, 'plugins'], {
        env: {...process.env, ...env, DEBUG: 'oclif:config'},
        extendEnv: false,
        reject: false,
        stdin: 'ignore',
      })
      return /reading user plugins pjson (\S+)/.exec(run.stderr)?.[1]
    }

    const home = path.join(box.root, 'home')
    expect(await where({HOME: home, WAFERS_DATA_DIR: undefined, XDG_DATA_HOME: path.join(home, 'share')})).to.equal(
      '/usr/local/lib/wafers/package.json',
    )
    expect(await where({HOME: '/root', WAFERS_DATA_DIR: undefined, XDG_DATA_HOME: undefined})).to.equal(
      '/usr/local/lib/wafers/package.json',
    )
    expect(await where({WAFERS_DATA_DIR: '/srv/wafers-plugins'})).to.equal('/srv/wafers-plugins/package.json')
  })

  it('lists the seeders of both plugins beside the built-in ones, each with its plugin', async function () {
    const run = await box.run(['seeders', '--json'])
    expect(run.exitCode, run.stderr).to.equal(0)
    const listing = JSON.parse(run.stdout) as Array<{name: string; plugin: string}>
    expect(listing.map(({name, plugin}) => `${name} ${plugin}`)).to.deep.equal([
      'alpha-fail wafers-plugin-test-alpha',
      'alpha-mount-fail wafers-plugin-test-alpha',
      'alpha-mount-leave wafers-plugin-test-alpha',
      'alpha-record wafers-plugin-test-alpha',
      'alpha-slow wafers-plugin-test-alpha',
      'alpha-writer wafers-plugin-test-alpha',
      'beta-fail wafers-plugin-test-beta',
      'beta-record wafers-plugin-test-beta',
      'busybox wafers',
      'dir wafers',
      'tar wafers',
    ])
  })

  it('runs a plugin seeder with the wafer name, its data dir and the arguments after --', async function () {
    const run = await box.run(['create', 'base', '--seed', 'beta-record', '--', 'one', 'two words', '--json'])
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(run.stdout).to.equal(`created base wafer base seeded with beta-record at ${box.data('base')}`)
    const ctx = JSON.parse(await fs.readFile(box.data('base', 'seeded-by'), 'utf8'))
    expect(ctx).to.include({plugin: 'beta', wafer: 'base'})
    expect(ctx.args).to.deep.equal(['one', 'two words', '--json'])
    expect(ctx.echoed).to.deep.equal(['hello from beta'])
    // It filled the data dir while the wafer was still hidden, then the wafer appeared whole.
    expect(path.isAbsolute(ctx.dataDir)).to.equal(true)
    // (reached through the stage wafers holds open, never through its swappable name in the store)
    expect(ctx.dataDir).to.match(/^\/proc\/\d+\/fd\/\d+\/data$/)
    expect(path.basename(ctx.dataDir)).to.equal('data')
    expect(await fs.readdir(box.wafers)).to.deep.equal(['base'])
    // Its progress lines streamed under its task on stderr.
    expect(said(run.stderr)).to.include('beta is seeding base')
    expect(said(run.stderr)).to.include('hello from beta')
  })

  it('leaves no wafer behind when a plugin seeder fails, and says which seeder failed and why', async function () {
    await fs.mkdir(box.wafers)
    const before = await snapshot(box.wafers)
    const run = await box.run(['create', 'base', '--seed', 'alpha-fail'])
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include(
      'seeder alpha-fail (wafers-plugin-test-alpha) failed: sh failed (exit code 3): disk on fire.',
    )
    expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  it('detaches what a failed seeder left mounted inside the wafer before removing it, never deleting through it', async function () {
    const host = path.join(box.root, 'host-dev')
    await fs.mkdir(host)
    await fs.writeFile(path.join(host, 'precious'), 'keep me\n')
    await fs.mkdir(box.wafers)
    const run = await box.run(['create', 'base', '--seed', 'alpha-mount-fail'], {WAFERS_TEST_HOST_DIR: host})
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include(
      'seeder alpha-mount-fail (wafers-plugin-test-alpha) failed: gave up with the host directory still mounted.',
    )
    expect(await fs.readFile(path.join(host, 'precious'), 'utf8')).to.equal('keep me\n')
    expect(await fs.readdir(box.wafers)).to.deep.equal([])
    expect(await mountsInBox()).to.deep.equal([])
  })

  it('refuses a seed that leaves a file system mounted inside the wafer', async function () {
    await fs.mkdir(box.wafers)
    const run = await box.run(['create', 'base', '--seed', 'alpha-mount-leave'])
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.match(
      /seeder alpha-mount-leave \(wafers-plugin-test-alpha\) left \S+\/data\/proc mounted inside the wafer\./,
    )
    expect(await fs.readdir(box.wafers)).to.deep.equal([])
    expect(await mountsInBox()).to.deep.equal([])
  })

  it('removes the half-made wafer when the user interrupts a seeder with Ctrl-C', async function () {
    await fs.mkdir(box.wafers)
    const before = await snapshot(box.wafers)
    const child = execa(process.execPath, [bin, 'create', 'base', '--seed', 'alpha-slow'], {
      env: box.env,
      reject: false,
      stdin: 'ignore',
    })
    const stage = async () => (await fs.readdir(box.wafers)).find((entry) => entry.startsWith('.create-base-'))
    for (let i = 0; i < 100; i++) {
      const name = await stage()
      if (
        name &&
        (await fs.access(path.join(box.wafers, name, 'data', 'half-made')).then(
          () => true,
          () => false,
        ))
      )
        break
      await new Promise((resolve) => {
        setTimeout(resolve, 100)
      })
    }

    expect(await stage(), 'the seeder started').to.not.equal(undefined)
    child.kill('SIGINT')
    const run = await child
    expect(run.exitCode).to.equal(130)
    expect(said(run.stderr)).to.include('seeder alpha-slow was interrupted by SIGINT; wafer base was not created.')
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  it('fires prestack and poststack at every plugin with the name, mount point and layers, top first', async function () {
    await box.wafer('base')
    const run = await box.run(['stack', 'child', 'base'], {WAFERS_TEST_LOG: log})
    expect(run.exitCode, run.stderr).to.equal(0)
    const events = await seen()
    const options = {
      layers: [box.data('child'), box.data('base')],
      mountpoint: box.stack('child'),
      name: 'child',
      wafers: ['child', 'base'],
    }
    expect(events.map(({event, plugin}) => `${event} ${plugin}`).sort()).to.deep.equal([
      'poststack alpha',
      'poststack beta',
      'prestack alpha',
      'prestack beta',
    ])
    for (const event of events) expect(event.seen).to.deep.equal(options)
    // prestack ran before the mount and poststack after it.
    expect(events.findIndex((event) => event.event === 'poststack')).to.be.greaterThan(
      events.findLastIndex((event) => event.event === 'prestack'),
    )
  })

  it('aborts the stack with the message of a failing prestack hook, and mounts nothing', async function () {
    await box.wafer('base')
    await box.wafer('child', {parent: 'base'})
    const before = await snapshot(box.root)
    const run = await box.run(['stack', 'child'], {WAFERS_TEST_FAIL: 'alpha:prestack'})
    expect(run.exitCode).to.equal(1)
    expect(run.stdout).to.equal('')
    expect(said(run.stderr)).to.include(
      'the wafers:prestack hook of wafers-plugin-test-alpha failed: alpha says no to prestack of child.',
    )
    expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
    expect(await mountsInBox()).to.deep.equal([])
    expect(await snapshot(box.root)).to.deep.equal(before)
  })

  it('creates nothing when a prestack hook refuses a stack that would create its wafer', async function () {
    await box.wafer('base')
    const before = await snapshot(box.root)
    const run = await box.run(['stack', 'fresh', 'base'], {WAFERS_TEST_FAIL: 'alpha:prestack'})
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include('alpha says no to prestack of fresh')
    expect(await snapshot(box.root)).to.deep.equal(before)
  })

  it('reports every plugin whose prestack hook failed', async function () {
    await box.wafer('base')
    const run = await box.run(['stack', 'base'], {WAFERS_TEST_FAIL: 'alpha:prestack,beta:prestack'})
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include('alpha says no to prestack of base')
    expect(said(run.stderr)).to.include('beta says no to prestack of base')
    expect(await mountsInBox()).to.deep.equal([])
  })

  it('fails the command and unmounts the stack again when a poststack hook fails', async function () {
    await box.wafer('base', {files: {hello: 'hi\n'}})
    await box.wafer('child', {parent: 'base'})
    const run = await box.run(['stack', 'child'], {WAFERS_TEST_FAIL: 'beta:poststack', WAFERS_TEST_LOG: log})
    expect(run.exitCode).to.equal(1)
    expect(run.stdout).to.equal('')
    expect(said(run.stderr)).to.include(
      'the wafers:poststack hook of wafers-plugin-test-beta failed: beta says no to poststack of child; the stack was unmounted again.',
    )
    expect(await mountsInBox()).to.deep.equal([])
    await fs.access(box.stack('child')).then(
      () => expect.fail('the mount point is still there'),
      () => {},
    )
    // The other plugin's poststack hook ran too: oclif runs plugins' hooks side by side.
    expect((await seen()).map(({event, plugin}) => `${event} ${plugin}`)).to.include('poststack alpha')
  })

  it('refuses an unstack whose preunstack hook fails, leaving the stack mounted', async function () {
    await box.wafer('base')
    expect((await box.run(['stack', 'child', 'base'])).exitCode).to.equal(0)
    const run = await box.run(['unstack', 'child'], {WAFERS_TEST_FAIL: 'beta:preunstack'})
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include(
      'the wafers:preunstack hook of wafers-plugin-test-beta failed: beta says no to preunstack of child.',
    )
    expect((await box.mountOf('child'))?.fstype).to.equal('overlay')
  })

  it('mounts the stack again when a postunstack hook fails, and fires both unstack hooks with name and mount point', async function () {
    await box.wafer('base', {files: {hello: 'hi\n'}})
    expect((await box.run(['stack', 'child', 'base'])).exitCode).to.equal(0)
    const failed = await box.run(['unstack', 'child'], {WAFERS_TEST_FAIL: 'alpha:postunstack'})
    expect(failed.exitCode).to.equal(1)
    expect(said(failed.stderr)).to.include('alpha says no to postunstack of child; the stack was mounted again.')
    expect((await box.mountOf('child'))?.fstype).to.equal('overlay')
    expect(await fs.readFile(box.stack('child', 'hello'), 'utf8')).to.equal('hi\n')
    const run = await box.run(['unstack', 'child'], {WAFERS_TEST_LOG: log})
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(await box.mountOf('child')).to.equal(undefined)
    const events = await seen()
    expect(events.map(({event, plugin}) => `${event} ${plugin}`).sort()).to.deep.equal([
      'postunstack alpha',
      'postunstack beta',
      'preunstack alpha',
      'preunstack beta',
    ])
    for (const event of events) expect(event.seen).to.deep.equal({mountpoint: box.stack('child'), name: 'child'})
  })

  it('fires no stack hooks when the stack is already mounted', async function () {
    await box.wafer('base')
    expect((await box.run(['stack', 'base'])).exitCode).to.equal(0)
    const run = await box.run(['stack', 'base'], {WAFERS_TEST_FAIL: 'alpha:prestack', WAFERS_TEST_LOG: log})
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(await seen()).to.deep.equal([])
  })
})
