import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {overlayLayers, readMountTable} from '../../src/lib/host/mounts.js'
import {Sandbox, hasStackTrace, nspawnIn, snapshot, useSandbox} from '../helpers/sandbox.js'

describe('wafers stack and unstack (real overlay mounts)', function () {
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  describe('stack NAME PARENT creating a new wafer', function () {
    it('creates the wafer, mounts an overlay at $STACKS/NAME and says how many wafers it stacked', async function () {
      await box.wafer('base', {files: {hello: 'from base\n'}})
      const run = await box.run(['stack', 'child', 'base'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(run.stdout).to.equal(`2 wafers stacked at ${box.stack('child')}`)
      expect((await fs.readFile(path.join(box.wafers, 'child', 'parent'), 'utf8')).trim()).to.equal('base')
      expect((await fs.stat(path.join(box.wafers, 'child', 'work'))).isDirectory()).to.equal(true)
      const mount = await box.mountOf('child')
      expect(mount?.fstype).to.equal('overlay')
      expect(await overlayLayers(mount!)).to.deep.equal({lowers: [box.data('base')], upper: box.data('child')})
      expect(await fs.readFile(box.stack('child', 'hello'), 'utf8')).to.equal('from base\n')
    })

    it('puts a file written in the stack in the top wafer only, and a deletion hides the file without deleting it below', async function () {
      await box.wafer('base', {files: {'etc/motd': 'hi\n', keep: 'k\n'}})
      expect((await box.run(['stack', 'child', 'base'])).exitCode).to.equal(0)
      await fs.writeFile(box.stack('child', 'new-file'), 'new\n')
      await fs.rm(box.stack('child', 'etc', 'motd'))
      expect(await fs.readFile(box.data('child', 'new-file'), 'utf8')).to.equal('new\n')
      await expectMissing(box.data('base', 'new-file'))
      await expectMissing(box.stack('child', 'etc', 'motd'))
      expect(await fs.readFile(box.data('base', 'etc', 'motd'), 'utf8')).to.equal('hi\n')
      const whiteout = await fs.lstat(box.data('child', 'etc', 'motd'))
      expect(whiteout.isCharacterDevice() && whiteout.rdev === 0).to.equal(true)
    })

    it('gives the new wafer its own random machine id, with the owner and mode of the one below', async function () {
      await box.wafer('base', {files: {'etc/machine-id': '0123456789abcdef0123456789abcdef\n'}})
      await fs.chown(box.data('base'), 1234, 5678)
      await fs.chmod(box.data('base'), 0o750)
      await fs.chown(box.data('base', 'etc'), 1234, 5678)
      await fs.chmod(box.data('base', 'etc'), 0o711)
      await fs.chown(box.data('base', 'etc', 'machine-id'), 1234, 5678)
      await fs.chmod(box.data('base', 'etc', 'machine-id'), 0o444)
      expect((await box.run(['stack', 'one', 'base'])).exitCode).to.equal(0)
      expect((await box.run(['stack', 'two', 'base'])).exitCode).to.equal(0)
      const one = await fs.readFile(box.data('one', 'etc', 'machine-id'), 'utf8')
      const two = await fs.readFile(box.data('two', 'etc', 'machine-id'), 'utf8')
      expect(one).to.match(/^[0-9a-f]{32}\n$/)
      expect(two).to.match(/^[0-9a-f]{32}\n$/)
      expect(new Set([one, two, '0123456789abcdef0123456789abcdef\n']).size).to.equal(3)
      expect(await fs.readFile(box.stack('one', 'etc', 'machine-id'), 'utf8')).to.equal(one)
      for (const [file, mode] of [
        [[], 0o750],
        [['etc'], 0o711],
        [['etc', 'machine-id'], 0o444],
      ] as const) {
        const stat = await fs.stat(box.data('one', ...file))
        expect([stat.uid, stat.gid, stat.mode & 0o7777], file.join('/') || 'data').to.deep.equal([1234, 5678, mode])
      }

      // Things created in the stack later still land in the top wafer, owned as the stack says.
      const root = await fs.stat(box.stack('one'))
      expect([root.uid, root.gid]).to.deep.equal([1234, 5678])
    })

    it('writes no machine id when the layers below have none', async function () {
      await box.wafer('base', {files: {'etc/hostname': 'base\n'}})
      expect((await box.run(['stack', 'child', 'base'])).exitCode).to.equal(0)
      expect(await fs.readdir(box.data('child'))).to.deep.equal([])
    })

    it('takes the machine id from the nearest layer that has one', async function () {
      await box.wafer('base', {files: {'etc/machine-id': 'a'.repeat(32) + '\n'}})
      expect((await box.run(['stack', 'mid', 'base'])).exitCode).to.equal(0)
      expect((await box.run(['unstack', 'mid'])).exitCode).to.equal(0)
      expect((await box.run(['stack', 'top', 'mid'])).exitCode).to.equal(0)
      const ids = await Promise.all(
        ['base', 'mid', 'top'].map((name) => fs.readFile(box.data(name, 'etc', 'machine-id'), 'utf8')),
      )
      expect(new Set(ids).size).to.equal(3)
    })
  })

  describe('ancestry', function () {
    it('stacks every ancestor, nearest first, so a nearer wafer wins', async function () {
      await box.wafer('base', {files: {'etc/os': 'base\n', 'only-base': 'b\n'}})
      await box.wafer('mid', {files: {'etc/os': 'mid\n'}, parent: 'base'})
      await box.wafer('top', {parent: 'mid'})
      const run = await box.run(['stack', 'top'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(run.stdout).to.equal(`3 wafers stacked at ${box.stack('top')}`)
      expect(await fs.readFile(box.stack('top', 'etc', 'os'), 'utf8')).to.equal('mid\n')
      expect(await fs.readFile(box.stack('top', 'only-base'), 'utf8')).to.equal('b\n')
      expect((await overlayLayers((await box.mountOf('top'))!)).lowers).to.deep.equal([
        box.data('mid'),
        box.data('base'),
      ])
    })

    it('works on a tree made by hand the bash way: no work directory, parent file without newline', async function () {
      await box.wafer('archbase', {files: {'bin/sh': '#!\n'}})
      await box.wafer('archbase2', {parent: 'archbase'})
      const run = await box.run(['stack', 'archbase2'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(await fs.readFile(box.stack('archbase2', 'bin', 'sh'), 'utf8')).to.equal('#!\n')
    })

    it('accepts PARENT again when it equals the recorded parent', async function () {
      await box.wafer('base')
      expect((await box.run(['stack', 'child', 'base'])).exitCode).to.equal(0)
      expect((await box.run(['unstack', 'child'])).exitCode).to.equal(0)
      const run = await box.run(['stack', 'child', 'base'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(run.stdout).to.equal(`2 wafers stacked at ${box.stack('child')}`)
    })
  })

  describe('a base wafer alone', function () {
    it('is bind-mounted, so writes go straight into its data', async function () {
      await box.wafer('base', {files: {hello: 'hi\n'}})
      const run = await box.run(['stack', 'base'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(run.stdout).to.equal(`1 wafer stacked at ${box.stack('base')}`)
      expect(await fs.readFile(box.stack('base', 'hello'), 'utf8')).to.equal('hi\n')
      await fs.writeFile(box.stack('base', 'written'), 'w\n')
      expect(await fs.readFile(box.data('base', 'written'), 'utf8')).to.equal('w\n')
      expect((await box.mountOf('base'))?.fstype).to.not.equal('overlay')
    })
  })

  describe('refusals change nothing on disk', function () {
    async function expectRefusal(args: string[], message: RegExp | string): Promise<void> {
      const before = await snapshot(box.root)
      const run = await box.run(args)
      expect(run.exitCode, `exit code of wafers ${args.join(' ')}`).to.equal(1)
      expect(run.stdout).to.equal('')
      if (typeof message === 'string') expect(run.stderr).to.include(message)
      else expect(run.stderr).to.match(message)
      expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
      expect(await snapshot(box.root)).to.deep.equal(before)
      expect((await readMountTable()).filter((entry) => entry.mountpoint.startsWith(box.root))).to.deep.equal([])
    }

    it('refuses a different PARENT for an existing wafer, naming both', async function () {
      await box.wafer('base')
      await box.wafer('other')
      await box.wafer('child', {parent: 'base'})
      await expectRefusal(['stack', 'child', 'other'], 'wafer child already exists and has parent base, not other.')
    })

    it('refuses a PARENT for an existing base wafer', async function () {
      await box.wafer('base')
      await box.wafer('other')
      await expectRefusal(
        ['stack', 'base', 'other'],
        'wafer base already exists and is a base wafer with no parent, not other.',
      )
    })

    it('says "wafer NAME not found" for a missing wafer without PARENT', async function () {
      await box.wafer('base')
      await expectRefusal(['stack', 'ghost'], `wafer ghost not found in ${box.wafers}.`)
    })

    it('refuses a missing PARENT without creating anything', async function () {
      await fs.mkdir(box.wafers)
      await expectRefusal(['stack', 'child', 'ghost'], `wafer ghost, the parent of child, not found in ${box.wafers}.`)
    })

    it('refuses an ancestor named in a parent file that does not exist, naming it', async function () {
      await box.wafer('mid', {parent: 'gone'})
      await box.wafer('top', {parent: 'mid'})
      await expectRefusal(['stack', 'top'], `wafer gone, the parent of mid, not found in ${box.wafers}.`)
    })

    it('refuses an ancestor that has no data directory, naming it', async function () {
      await fs.mkdir(path.join(box.wafers, 'hollow'), {recursive: true})
      await box.wafer('top', {parent: 'hollow'})
      await expectRefusal(['stack', 'top'], 'wafer hollow, the parent of top, has no data directory.')
    })

    it('refuses a stack of 502 wafers before touching anything, saying the limit', async function () {
      await makeChain(box, 502, 64)
      const top = chainName(501, 64)
      await expectRefusal(['stack', top], /deeper than 501 wafers; overlayfs mounts at most 500 lower layers/)
    })

    it('refuses to create a wafer that would make a stack of 502', async function () {
      await makeChain(box, 501, 64)
      await expectRefusal(['stack', 'one-too-many', chainName(500, 64)], /deeper than 501 wafers/)
    })
  })

  describe('depth', function () {
    it('mounts a stack of 501 wafers with 64-character names', async function () {
      await makeChain(box, 501, 64)
      const top = chainName(500, 64)
      const run = await box.run(['stack', top])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(run.stdout).to.equal(`501 wafers stacked at ${box.stack(top)}`)
      const layers = await overlayLayers((await box.mountOf(top))!)
      expect(layers.lowers).to.have.length(500)
      expect(layers.lowers[0]).to.equal(box.data(chainName(499, 64)))
      expect(layers.lowers[499]).to.equal(box.data(chainName(0, 64)))
      // Every layer shows through: each wafer holds one file named after its depth.
      const files = await fs.readdir(box.stack(top))
      expect(files).to.have.length(501)
    })
  })

  describe('stacking what is already stacked', function () {
    it('says so, exits 0 and never mounts twice', async function () {
      await box.wafer('base')
      expect((await box.run(['stack', 'child', 'base'])).exitCode).to.equal(0)
      const run = await box.run(['stack', 'child'])
      expect(run.exitCode).to.equal(0)
      expect(run.stdout).to.equal(`2 wafers stacked at ${box.stack('child')} (already stacked: nothing to do)`)
      const mounts = (await readMountTable()).filter((entry) => entry.mountpoint === box.stack('child'))
      expect(mounts).to.have.length(1)
    })
  })

  describe('unstack', function () {
    it('unmounts, removes the empty mount point and keeps the wafer data', async function () {
      await box.wafer('base', {files: {keep: 'k\n'}})
      expect((await box.run(['stack', 'child', 'base'])).exitCode).to.equal(0)
      await fs.writeFile(box.stack('child', 'written'), 'w\n')
      const run = await box.run(['unstack', 'child'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(run.stdout).to.equal(`unstacked ${box.stack('child')}`)
      expect(await box.mountOf('child')).to.equal(undefined)
      await expectMissing(box.stack('child'))
      expect(await fs.readFile(box.data('child', 'written'), 'utf8')).to.equal('w\n')
      expect(await fs.readFile(box.data('base', 'keep'), 'utf8')).to.equal('k\n')
    })

    it('takes several names and reports the ones with nothing stacked', async function () {
      await box.wafer('a')
      await box.wafer('b')
      expect((await box.run(['stack', 'a'])).exitCode).to.equal(0)
      expect((await box.run(['stack', 'b'])).exitCode).to.equal(0)
      const run = await box.run(['unstack', 'a', 'nothing', 'b'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(run.stdout.split('\n')).to.deep.equal([
        `unstacked ${box.stack('a')}`,
        `nothing stacked at ${box.stack('nothing')}`,
        `unstacked ${box.stack('b')}`,
      ])
      expect(await box.mountOf('a')).to.equal(undefined)
      expect(await box.mountOf('b')).to.equal(undefined)
    })

    it('stacks again after unstacking, without the parent', async function () {
      await box.wafer('base', {files: {f: '1\n'}})
      expect((await box.run(['stack', 'child', 'base'])).exitCode).to.equal(0)
      await fs.writeFile(box.stack('child', 'mine'), 'm\n')
      expect((await box.run(['unstack', 'child'])).exitCode).to.equal(0)
      expect((await box.run(['stack', 'child'])).exitCode).to.equal(0)
      expect(await fs.readFile(box.stack('child', 'mine'), 'utf8')).to.equal('m\n')
      expect(await fs.readFile(box.stack('child', 'f'), 'utf8')).to.equal('1\n')
    })
  })

  describe('output for scripts and people', function () {
    it('prints only a JSON result with --json', async function () {
      await box.wafer('base')
      const run = await box.run(['stack', 'child', 'base', '--json'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(JSON.parse(run.stdout)).to.deep.include({
        created: true,
        layers: [box.data('child'), box.data('base')],
        mountpoint: box.stack('child'),
        name: 'child',
        parent: 'base',
        wafers: ['child', 'base'],
      })
      expect(run.stderr).to.equal('')
      const down = await box.run(['unstack', 'child', 'gone', '--json'])
      expect(JSON.parse(down.stdout)).to.deep.equal([
        {mountpoint: box.stack('child'), name: 'child', unstacked: true},
        {mountpoint: box.stack('gone'), name: 'gone', unstacked: false},
      ])
    })

    it('prints progress as plain lines on stderr when piped, and the result on stdout', async function () {
      await box.wafer('base')
      const run = await box.run(['stack', 'child', 'base'])
      expect(run.stdout).to.equal(`2 wafers stacked at ${box.stack('child')}`)
      expect(run.stderr).to.include('Traced 2 wafers: child <- base')
      expect(run.stderr).to.include('Create wafer child on base')
      expect(run.stderr).to.include(`Mounted 2 wafers at ${box.stack('child')}`)
      expect(run.stderr).to.not.match(/\u001B\[\d*[AK]/) // no cursor movement: plain lines only
    })
  })

  describe('in a terminal', function () {
    // util-linux's script(1) gives the CLI a pseudo-terminal, as a person's shell would.
    const inTerminal = (args: string[], columns?: number, input?: string) => box.inTerminal(args, columns, input)

    it('shows a live listr2 task list for one stack', async function () {
      await box.wafer('base')
      const {exitCode, screen} = await inTerminal(['stack', 'child', 'base'])
      expect(exitCode, screen).to.equal(0)
      expect(screen).to.include('✔ Traced 2 wafers: child <- base')
      expect(screen).to.include(`✔ Mounted 2 wafers at ${box.stack('child')}`)
      expect(screen).to.include(`2 wafers stacked at ${box.stack('child')}`)
      expect(await box.mountOf('child')).to.not.equal(undefined)
    })

    it('prints whole lines on a terminal that reports 0 columns', async function () {
      await box.wafer('base')
      const {exitCode, screen} = await inTerminal(['stack', 'child', 'base'], 0)
      expect(exitCode, screen).to.equal(0)
      expect(screen).to.include('Traced 2 wafers: child <- base')
      expect(screen).to.include(`Mounted 2 wafers at ${box.stack('child')}`)
      const errors = await inTerminal(['stack', 'ghost'], 0)
      expect(errors.exitCode).to.equal(1)
      expect(errors.screen).to.include(`wafer ghost not found in ${box.wafers}.`)
    })

    it('takes -h as --help, for every command', async function () {
      for (const args of [['stack', '-h'], ['rm', '-h'], ['plugins', 'install', '-h'], ['-h']]) {
        const run = await box.run(args)
        expect(run.exitCode, `${args.join(' ')}: ${run.stderr}`).to.equal(0)
        expect(run.stdout).to.include('USAGE')
      }
    })

    it('suggests the command meant when one is misspelt, as oclif does', async function () {
      const {exitCode, screen} = await inTerminal(['stak'], 120, 'n\r')
      expect(exitCode, screen).to.equal(127)
      expect(screen).to.include('stak is not a wafers command.')
      expect(screen).to.include('Did you mean stack?')
    })

    it('shows each stack of a batch with its steps, and the failures by name', async function () {
      for (const name of ['a', 'b', 'c']) {
        await box.wafer(name)
      }

      await fs.mkdir(box.stack('b'), {recursive: true})
      await fs.writeFile(box.stack('b', 'in-the-way'), 'x')
      const {exitCode, screen} = await inTerminal(['stack', '--all'])
      expect(exitCode, screen).to.equal(1)
      expect(screen).to.include('✔ Stack a')
      expect(screen).to.include('✔ Stack c')
      expect(screen).to.include(`cannot stack b: mount point ${box.stack('b')} is not empty`)
      expect(screen).to.not.include('hijacked')
      expect(await box.mountOf('a')).to.not.equal(undefined)
      expect(await box.mountOf('c')).to.not.equal(undefined)
    })
  })

  describe('a container in the stack', function () {
    it('boots a command with systemd-nspawn, and its change lands in the top wafer only', async function () {
      expect((await box.run(['create', 'base', '--seed', 'busybox'])).exitCode).to.equal(0)
      expect((await box.run(['stack', 'child', 'base'])).exitCode).to.equal(0)
      const nspawn = await nspawnIn(box.stack('child'), [
        '/bin/sh',
        '-c',
        'echo jesse:x:1000:1000::/home/jesse:/bin/sh >> /etc/passwd && mkdir -p /home/jesse',
      ])
      expect(nspawn.exitCode, nspawn.stderr + nspawn.stdout).to.equal(0)
      expect((await box.run(['unstack', 'child'])).exitCode).to.equal(0)
      expect(await fs.readFile(box.data('child', 'etc', 'passwd'), 'utf8')).to.match(/^jesse:/m)
      expect(await fs.readFile(box.data('base', 'etc', 'passwd'), 'utf8')).to.not.match(/jesse/)
      expect((await fs.stat(box.data('child', 'home', 'jesse'))).isDirectory()).to.equal(true)
    })
  })

  describe('live stacks from the mount table', function () {
    it('finds stacks mounted by wafers, by hand with absolute paths, and bind-mounted bases', async function () {
      const {liveStacks} = await import('../../src/lib/mount/usage.js')
      const {WaferStore} = await import('../../src/lib/store/store.js')
      await box.wafer('base')
      await box.wafer('mid', {parent: 'base'})
      await box.wafer('hand', {parent: 'base'})
      expect((await box.run(['stack', 'mid'])).exitCode).to.equal(0)
      expect((await box.run(['stack', 'base', '--force'])).exitCode).to.equal(0)
      const target = path.join(box.root, 'by-hand')
      await box.mountByHand(target, ['base'], 'hand')
      const stacks = await liveStacks(new WaferStore(box.wafers))
      expect(stacks).to.deep.include.members([
        {lowers: ['base'], mountpoint: box.stack('mid'), top: 'mid'},
        {lowers: [], mountpoint: box.stack('base'), top: 'base'},
        {lowers: ['base'], mountpoint: target, top: 'hand'},
      ])
      expect(stacks).to.have.length(3)
    })
  })
})

async function expectMissing(file: string): Promise<void> {
  const error = await fs.lstat(file).then(
    () => undefined,
    (error_: NodeJS.ErrnoException) => error_,
  )
  expect(error?.code, `${file} should not exist`).to.equal('ENOENT')
}

/** Wafer i of a chain, padded to `length` characters. */
function chainName(i: number, length: number): string {
  return `w${i}-`.padEnd(length, 'x')
}

/** Makes a chain of `count` wafers, each on the previous, each holding a file named after it. */
async function makeChain(box: Sandbox, count: number, length: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    await box.wafer(chainName(i, length), {
      files: {[`layer-${i}`]: `${i}\n`},
      parent: i === 0 ? undefined : chainName(i - 1, length),
    })
  }
}
