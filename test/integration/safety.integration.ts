import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {readMountTable} from '../../src/lib/host/mounts.js'
import {Sandbox, hasStackTrace, snapshot, useSandbox} from '../helpers/sandbox.js'

interface BadInput {
  args: string[]
  exit?: number
  message: RegExp | string
  setup?: (box: Sandbox) => Promise<void>
  title: string
}

const RULE =
  'is not valid: use ASCII letters, digits, "-", "_" and "." only, not starting with "." or "-", at most 64 characters.'

async function base(box: Sandbox): Promise<void> {
  await box.wafer('base', {files: {'etc/os-release': 'ID=test\n'}})
}

async function family(box: Sandbox): Promise<void> {
  await base(box)
  await box.wafer('child', {parent: 'base'})
}

const BAD_INPUTS: BadInput[] = [
  ...[
    '.',
    '..',
    '.hidden',
    'a/b',
    '../etc',
    '/etc',
    'a b',
    'a:b',
    'a,b',
    'tab\there',
    'new\nline',
    'x'.repeat(65),
    'été',
    'a*b',
    'semi;colon',
  ].map((name): BadInput => ({
    args: ['stack', name, 'base'],
    message: `wafer name ${JSON.stringify(name)} ${RULE}`,
    setup: base,
    title: `stack name ${JSON.stringify(name)}`,
  })),
  {args: ['unstack', '--', '-x'], message: `wafer name "-x" ${RULE}`, setup: base, title: 'name starting with "-"'},
  {
    args: ['stack', 'base', '--', 'stray'],
    message: 'arguments after -- go to a seeder, but no --seed was given.',
    setup: base,
    title: 'seeder arguments without --seed',
  },
  {
    args: ['stack', 'child', '../base'],
    message: `parent name "../base" ${RULE}`,
    setup: base,
    title: 'parent name escaping $WAFERS',
  },
  {
    args: ['stack', 'child', 'a/b'],
    message: `parent name "a/b" ${RULE}`,
    setup: base,
    title: 'parent name with a slash',
  },
  {
    args: ['unstack', 'ok', '../../etc'],
    message: `wafer name "../../etc" ${RULE}`,
    setup: base,
    title: 'unstack name escaping $STACKS',
  },
  {
    args: ['stack'],
    message: 'give the NAME of a wafer to stack, or --name NAME (repeatable), or --all.',
    title: 'stack without a name',
  },
  {
    args: ['stack', 'base', '--bogus'],
    exit: 2,
    message: 'Nonexistent flag: --bogus',
    setup: base,
    title: 'unknown flag',
  },
  {
    args: ['stack', 'base', 'x', '--all'],
    exit: 2,
    message: '--all stacks every wafer without children; give no NAME or PARENT with it.',
    setup: base,
    title: '--all with a parent',
  },
  {
    args: ['stack', '--all', '--name', 'base'],
    exit: 2,
    message: '--name=base cannot also be provided when using --all',
    setup: base,
    title: '--all with --name',
  },
  {
    args: ['stack', 'child'],
    message: 'the parent of wafer child, "../../etc" is not valid',
    async setup(box) {
      await box.wafer('child', {parent: '../../etc'})
    },
    title: 'tampered parent file pointing outside $WAFERS',
  },
  {
    args: ['stack', 'child'],
    message: 'the parent file of wafer child has 2 lines; it must name one wafer.',
    async setup(box) {
      await base(box)
      await box.wafer('child', {parent: 'base\nother\n'})
    },
    title: 'parent file with two lines',
  },
  {
    args: ['stack', 'child'],
    message: 'the parent file of wafer child is a directory.',
    async setup(box) {
      await box.wafer('child')
      await fs.mkdir(path.join(box.wafers, 'child', 'parent'))
    },
    title: 'parent file that is a directory',
  },
  {
    args: ['stack', 'self'],
    message: 'the ancestry of wafer self loops: self -> self.',
    async setup(box) {
      await box.wafer('self', {parent: 'self'})
    },
    title: 'a wafer that is its own parent',
  },
  {
    args: ['stack', 'a'],
    message: 'the ancestry of wafer a loops: a -> b -> c -> a.',
    async setup(box) {
      await box.wafer('a', {parent: 'b'})
      await box.wafer('b', {parent: 'c'})
      await box.wafer('c', {parent: 'a'})
    },
    title: 'a cycle of three',
  },
  {
    args: ['stack', 'child'],
    message: `wafer child has no data directory at ${'WAFERS'}/child/data.`,
    async setup(box) {
      await fs.mkdir(path.join(box.wafers, 'child'), {recursive: true})
      await fs.writeFile(path.join(box.wafers, 'child', 'data'), 'not a directory')
    },
    title: 'data that is a file',
  },
  {
    args: ['stack', 'child'],
    message: `${'WAFERS'}/child/work is not a directory; overlayfs needs it as scratch space.`,
    async setup(box) {
      await family(box)
      await fs.writeFile(path.join(box.wafers, 'child', 'work'), 'not a directory')
    },
    title: 'work that is a file',
  },
  {
    args: ['stack', 'child'],
    message: `mount point ${'STACKS'}/child is a symbolic link; remove it first.`,
    async setup(box) {
      await family(box)
      await fs.mkdir(box.stacks)
      await fs.symlink('/etc', box.stack('child'))
    },
    title: 'mount point that is a symlink',
  },
  {
    args: ['stack', 'child'],
    message: `mount point ${'STACKS'}/child exists and is not a directory.`,
    async setup(box) {
      await family(box)
      await fs.mkdir(box.stacks)
      await fs.writeFile(box.stack('child'), 'a file')
    },
    title: 'mount point that is a file',
  },
  {
    args: ['stack', 'child'],
    message: `mount point ${'STACKS'}/child is not empty; stacking there would hide its files.`,
    async setup(box) {
      await family(box)
      await fs.mkdir(box.stack('child'), {recursive: true})
      await fs.writeFile(box.stack('child', 'precious'), 'keep me')
    },
    title: 'mount point that is a non-empty directory',
  },
  {
    args: ['stack', 'child', 'other'],
    message: 'wafer child already exists and has parent base, not other.',
    async setup(box) {
      await family(box)
      await box.wafer('other')
    },
    title: 'a different parent for an existing wafer',
  },
  {
    args: ['stack', 'ghost'],
    message: 'wafer ghost not found in WAFERS.',
    setup: base,
    title: 'a wafer that does not exist',
  },
  {
    args: ['stack', 'child', 'ghost'],
    message: 'wafer ghost, the parent of child, not found in WAFERS.',
    setup: base,
    title: 'a parent that does not exist',
  },
  {
    args: ['stack', 'child'],
    message:
      /stacking child would make a wafer both a writable top and a lower layer.*base, below child, is the writable top of the stack at .*\/stacks\/base/,
    async setup(box) {
      await family(box)
      await expectSuccess(box, ['stack', 'base'])
    },
    title: 'stacking on top of a wafer that is itself stacked',
  },
  {
    args: ['stack', 'base'],
    message: /base is a lower layer of the stack at .*\/stacks\/child/,
    async setup(box) {
      await family(box)
      await expectSuccess(box, ['stack', 'child'])
    },
    title: 'stacking a wafer that is a lower layer of a mounted stack',
  },
  {
    args: ['stack', 'child'],
    message: /child is already the top of the stack at .*\/by-hand/,
    async setup(box) {
      await family(box)
      await box.mountByHand(path.join(box.root, 'by-hand'), ['base'], 'child')
    },
    title: 'stacking a wafer that is the top of a stack mounted by hand elsewhere',
  },
  {
    args: ['stack', 'child'],
    message: /stacks\/child has tmpfs from tmpfs mounted, not a stack of wafer child; unmount it first\./,
    async setup(box) {
      await family(box)
      await fs.mkdir(box.stack('child'), {recursive: true})
      await execa('mount', ['-t', 'tmpfs', 'tmpfs', box.stack('child')])
    },
    title: 'stacking where something else is mounted',
  },
  {
    args: ['unstack', 'child'],
    message: /stacks\/child has the stack of wafer base mounted, not a stack of wafer child; unmount it first\./,
    async setup(box) {
      await family(box)
      await fs.mkdir(box.stack('child'), {recursive: true})
      await execa('mount', ['--bind', box.data('base'), box.stack('child')])
    },
    title: "unstacking what is not the wafer's stack",
  },
  {
    args: ['rm', '--yes', 'base'],
    message: /wafer base has .*\/wafers\/base\/data\/mnt mounted inside; unmount it first\. Nothing removed\./,
    async setup(box) {
      await base(box)
      await fs.mkdir(box.data('base', 'mnt'))
      await fs.mkdir(path.join(box.root, 'host-dir'))
      await fs.writeFile(path.join(box.root, 'host-dir', 'precious'), 'keep')
      await execa('mount', ['--bind', path.join(box.root, 'host-dir'), box.data('base', 'mnt')])
    },
    title: 'removing a wafer with a host directory mounted inside',
  },
  {
    args: ['stack', 'inner'],
    env: (box: Sandbox) => ({STACKS: path.join(box.root, 'inner-stacks'), WAFERS: box.stack('outer', 'wafers')}),
    message: /is on overlayfs, which overlayfs cannot use for a writable layer/,
    async setup(box) {
      await box.wafer('outer-base')
      await box.wafer('outer', {parent: 'outer-base'})
      await expectSuccess(box, ['stack', 'outer'])
      await fs.mkdir(box.stack('outer', 'wafers', 'lower', 'data'), {recursive: true})
      await fs.mkdir(box.stack('outer', 'wafers', 'inner', 'data'), {recursive: true})
      await fs.writeFile(box.stack('outer', 'wafers', 'inner', 'parent'), 'lower\n')
    },
    title: '$WAFERS on a file system overlayfs cannot use as an upper',
  } as BadInput,
  {
    args: ['stack', 'child'],
    message: `${'WAFERS'}/.links is a symlink; wafers keeps its links only in a real directory there.`,
    async setup(box) {
      await family(box)
      await fs.mkdir(path.join(box.root, 'elsewhere'))
      await fs.symlink(path.join(box.root, 'elsewhere'), path.join(box.wafers, '.links'))
    },
    title: '$WAFERS/.links that is a symlink out of the store',
  },
  {
    args: ['stack', 's4', 's3'],
    message: `${'WAFERS'}/s3, the directory of wafer s3, is a symlink; wafers does not follow it.`,
    async setup(box) {
      await fs.mkdir(path.join(box.root, 'elsewhere', 'data'), {recursive: true})
      await fs.mkdir(box.wafers)
      await fs.symlink(path.join(box.root, 'elsewhere'), path.join(box.wafers, 's3'))
    },
    title: 'a wafer directory that is a symlink out of the store, as a parent',
  },
  {
    args: ['stack', 's3'],
    message: `${'WAFERS'}/s3, the directory of wafer s3, is a symlink; wafers does not follow it.`,
    async setup(box) {
      await fs.mkdir(path.join(box.root, 'elsewhere', 'data'), {recursive: true})
      await fs.mkdir(box.wafers)
      await fs.symlink(path.join(box.root, 'elsewhere'), path.join(box.wafers, 's3'))
    },
    title: 'a wafer directory that is a symlink out of the store, stacked',
  },
  ...[
    {env: (box: Sandbox) => ({STACKS: box.wafers}), how: 'the same directory'},
    {env: (box: Sandbox) => ({STACKS: path.join(box.wafers, 'base', 'data')}), how: 'STACKS inside a wafer'},
    {env: (box: Sandbox) => ({WAFERS: path.join(box.stacks, 'w')}), how: 'WAFERS inside STACKS'},
  ].map(
    ({env, how}) =>
      ({
        args: ['stack', 'base'],
        env,
        message:
          /WAFERS \(.*\) and STACKS \(.*\) (are the same directory|overlap); stacks would be mounted over wafers' own files, so give them separate directories\./,
        setup: base,
        title: `WAFERS and STACKS overlapping: ${how}`,
      }) as BadInput,
  ),
]

describe('safety', function () {
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  describe('bad input is refused, with one sentence, and changes nothing', function () {
    it(`covers at least 30 cases`, function () {
      expect(BAD_INPUTS.length).to.be.at.least(30)
    })

    for (const input of BAD_INPUTS) {
      it(input.title, async function () {
        await input.setup?.(box)
        const mountsBefore = await mountsUnder(box.root)
        const before = await snapshot(box.root)
        const env = (input as BadInput & {env?: (box: Sandbox) => Record<string, string>}).env?.(box) ?? {}
        const run = await box.run(input.args, env)
        expect(run.exitCode, run.stderr).to.equal(input.exit ?? 1)
        const message =
          typeof input.message === 'string'
            ? input.message.replace('WAFERS', box.wafers).replace('STACKS', box.stacks)
            : input.message
        if (typeof message === 'string') expect(run.stderr).to.include(message)
        else expect(run.stderr).to.match(message)
        expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
        expect(run.stdout).to.equal('')
        expect(await snapshot(box.root)).to.deep.equal(before)
        expect(await mountsUnder(box.root)).to.deep.equal(mountsBefore)
      })
    }

    it('refuses to run as another user than root, before touching anything', async function () {
      await base(box)
      await fs.chmod(box.root, 0o755)
      const before = await snapshot(box.root)
      const bin = path.resolve('bin/run.js')
      const run = await execa(process.execPath, [bin, 'stack', 'child', 'base'], {
        env: box.env,
        gid: 65_534,
        reject: false,
        uid: 65_534,
      })
      expect(run.exitCode).to.equal(1)
      expect(run.stderr).to.include('wafers must run as root to mount and unmount stacks.')
      expect(run.stderr).to.include('Run it with sudo.')
      expect(await snapshot(box.root)).to.deep.equal(before)
    })

    it('stacks anyway with --force, warning about the conflict', async function () {
      await family(box)
      await expectSuccess(box, ['stack', 'base'])
      const run = await box.run(['stack', 'child', '--force'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(run.stderr).to.match(/Warning: stacking child would make a wafer both a writable top and a lower layer/)
      expect(run.stdout).to.equal(`2 wafers stacked at ${box.stack('child')}`)
    })
  })

  describe('faults and concurrency', function () {
    it('leaves no wafer or a whole one when a create is killed with -9 at random points', async function () {
      await box.wafer('base', {files: {'etc/machine-id': 'b'.repeat(32) + '\n'}})
      for (let round = 0; round < 12; round++) {
        const name = `victim${round}`
        const child = execa(process.execPath, [path.resolve('bin/run.js'), 'stack', name, 'base'], {
          env: box.env,
          reject: false,
        })
        await new Promise((resolve) => {
          setTimeout(resolve, 80 + Math.random() * 250)
        })
        child.kill('SIGKILL')
        await child
        const dir = path.join(box.wafers, name)
        const exists = await fs.stat(dir).then(
          () => true,
          () => false,
        )
        if (exists) {
          expect((await fs.readdir(dir)).sort(), name).to.deep.equal(['data', 'parent', 'work'])
          expect(await fs.readFile(path.join(dir, 'parent'), 'utf8')).to.equal('base\n')
          expect(await fs.readFile(box.data(name, 'etc', 'machine-id'), 'utf8')).to.match(/^[0-9a-f]{32}\n$/)
        }

        // Whatever state it was left in, the next run completes it.
        await expectSuccess(box, ['stack', name, 'base'])
        await expectSuccess(box, ['unstack', name])
      }

      // No half-made wafer, and the staging directories of killed creates were cleaned up by later ones.
      expect((await fs.readdir(box.wafers)).sort()).to.deep.equal(
        ['.links', 'base', ...Array.from({length: 12}, (_, i) => `victim${i}`)].sort(),
      )
    })

    it('creates and mounts a wafer once when eight `stack X P` run at once', async function () {
      await box.wafer('base', {files: {'etc/machine-id': 'c'.repeat(32) + '\n'}})
      const runs = await Promise.all(Array.from({length: 8}, () => box.run(['stack', 'x', 'base'])))
      for (const run of runs) {
        expect(run.exitCode, run.stderr).to.equal(0)
        expect(run.stdout).to.match(new RegExp(`^2 wafers stacked at ${box.stack('x')}`))
      }

      expect(runs.filter((run) => run.stdout.includes('already stacked'))).to.have.length(7)
      expect((await readMountTable()).filter((entry) => entry.mountpoint === box.stack('x'))).to.have.length(1)
      expect((await fs.readdir(box.wafers)).sort()).to.deep.equal(['.links', 'base', 'x'])
      expect(await fs.readFile(box.stack('x', 'etc', 'machine-id'), 'utf8')).to.equal(
        await fs.readFile(box.data('x', 'etc', 'machine-id'), 'utf8'),
      )
    })

    it('never leaves a mount without its directory or a directory without its mount when stack and unstack race', async function () {
      await family(box)
      for (let round = 0; round < 6; round++) {
        const runs = await Promise.all([
          box.run(['stack', 'child']),
          box.run(['unstack', 'child']),
          box.run(['stack', 'child']),
        ])
        for (const run of runs) expect(run.exitCode, run.stderr).to.equal(0)
        const mounted = (await box.mountOf('child')) !== undefined
        const dir = await fs.stat(box.stack('child')).then(
          () => true,
          () => false,
        )
        expect(dir, `round ${round}: directory exists iff mounted`).to.equal(mounted)
      }
    })

    it('never removes a wafer that a racing stack mounts', async function () {
      await base(box)
      for (let round = 0; round < 5; round++) {
        const name = `racer${round}`
        await box.wafer(name, {parent: 'base'})
        const [removal, stacking] = await Promise.all([box.run(['rm', '--yes', name]), box.run(['stack', name])])
        const mounted = (await box.mountOf(name)) !== undefined
        const exists = await fs.stat(box.data(name)).then(
          () => true,
          () => false,
        )
        if (mounted) {
          expect(exists, `round ${round}: a mounted stack keeps its wafer`).to.equal(true)
          expect(removal.exitCode, removal.stderr).to.equal(1)
        } else {
          expect(removal.exitCode, removal.stderr).to.equal(0)
          expect(exists).to.equal(false)
          expect(stacking.exitCode).to.equal(1)
        }
      }
    })

    it('never leaves a new wafer on a parent that a racing rm removed', async function () {
      for (let round = 0; round < 5; round++) {
        const [parent, child] = [`parent${round}`, `child${round}`]
        await box.wafer(parent)
        await Promise.all([box.run(['create', child, parent]), box.run(['rm', '--yes', parent])])
        const [childThere, parentThere] = await Promise.all(
          [box.data(child), box.data(parent)].map((dir) =>
            fs.stat(dir).then(
              () => true,
              () => false,
            ),
          ),
        )
        if (childThere) expect(parentThere, `round ${round}: ${child} exists, so its parent must`).to.equal(true)
      }
    })

    it('refuses to unstack a stack that a process in another mount namespace uses, as a container would', async function () {
      await family(box)
      await expectSuccess(box, ['stack', 'child'])
      const container = execa('unshare', ['-m', '--propagation', 'slave', 'sleep', '60'], {
        cwd: box.stack('child'),
        reject: false,
      })
      try {
        await new Promise((resolve) => {
          setTimeout(resolve, 200)
        })
        const run = await box.run(['unstack', 'child'])
        expect(run.exitCode, run.stderr).to.equal(1)
        expect(run.stderr).to.match(
          new RegExp(`stack child at ${box.stack('child')} is in use by \\d+ \\(sleep\\); it stays mounted\\.`),
        )
        expect(await box.mountOf('child')).to.not.equal(undefined)
        expect((await box.run(['rm', '--yes', 'child'])).exitCode).to.equal(1)
        expect((await fs.stat(box.data('child'))).isDirectory()).to.equal(true)
      } finally {
        container.kill()
        await container
      }
    })

    it('names a process that only keeps a file open in the stack', async function () {
      await family(box)
      await expectSuccess(box, ['stack', 'child'])
      await fs.writeFile(box.stack('child', 'log'), 'line\n')
      const reader = execa('tail', ['-f', box.stack('child', 'log')], {cwd: box.root, reject: false})
      try {
        await new Promise((resolve) => {
          setTimeout(resolve, 200)
        })
        const run = await box.run(['unstack', 'child'])
        expect(run.exitCode, run.stderr).to.equal(1)
        expect(run.stderr).to.include(`is in use by ${reader.pid} (tail); it stays mounted.`)
        expect(await box.mountOf('child')).to.not.equal(undefined)
      } finally {
        reader.kill()
        await reader
      }
    })

    it('cleans up after a create killed while its seeder had something mounted inside', async function () {
      await base(box)
      const stage = path.join(box.wafers, '.create-kid-999999-0123abcd')
      await fs.mkdir(path.join(stage, 'data', 'proc'), {recursive: true})
      await execa('mount', ['-t', 'tmpfs', 'tmpfs', path.join(stage, 'data', 'proc')])
      await expectSuccess(box, ['create', 'kid', 'base'])
      expect((await fs.readdir(box.wafers)).sort()).to.deep.equal(['base', 'kid'])
      expect(await mountsUnder(box.wafers)).to.deep.equal([])
    })

    it('refuses to unstack a stack in use, naming the processes, and --lazy detaches it', async function () {
      await family(box)
      await expectSuccess(box, ['stack', 'child'])
      const sleeper = execa('sleep', ['60'], {cwd: box.stack('child'), reject: false})
      try {
        await new Promise((resolve) => {
          setTimeout(resolve, 100)
        })
        const run = await box.run(['unstack', 'child'])
        expect(run.exitCode).to.equal(1)
        expect(run.stderr).to.include(
          `stack child at ${box.stack('child')} is in use by ${sleeper.pid} (sleep); it stays mounted.`,
        )
        expect(run.stderr).to.include('--lazy')
        expect(await box.mountOf('child')).to.not.equal(undefined)
        const lazy = await box.run(['unstack', 'child', '--lazy'])
        expect(lazy.exitCode, lazy.stderr).to.equal(0)
        expect(lazy.stdout).to.equal(
          `detached ${box.stack('child')}, but it is still in use by ${sleeper.pid} (sleep): its wafers stay busy until they leave`,
        )
        expect(await box.mountOf('child')).to.equal(undefined)
        // Once nobody is left: a plain unstacked, and --json says who still used it (no one).
        sleeper.kill()
        await sleeper
        await expectSuccess(box, ['stack', 'child'])
        const idle = await box.run(['unstack', 'child', '--lazy', '--json'])
        expect(idle.exitCode, idle.stderr).to.equal(0)
        expect(JSON.parse(idle.stdout)).to.deep.equal([
          {mountpoint: box.stack('child'), name: 'child', stillUsedBy: [], unstacked: true},
        ])
      } finally {
        sleeper.kill()
        await sleeper
      }
    })

    it('stops cleanly on Ctrl-C mid-batch: what finished stays, what did not start is untouched', async function () {
      const names = Array.from({length: 300}, (_, i) => `w${String(i).padStart(3, '0')}`)
      for (const name of names) {
        await box.wafer(name)
      }

      const batch = execa(process.execPath, [path.resolve('bin/run.js'), 'stack', '--all'], {
        env: box.env,
        reject: false,
      })
      for (let tries = 0; tries < 2000 && (await mountsUnder(box.stacks)).length < 3; tries++) {
        await new Promise((resolve) => {
          setTimeout(resolve, 2)
        })
      }

      batch.kill('SIGINT')
      const run = await batch
      expect(run.exitCode, run.stderr).to.equal(130)
      const summary = /interrupted: stacked (.*); failed (.*); not started (.*)\./.exec(run.stderr)
      expect(summary, run.stderr.slice(-300)).to.not.equal(null)
      const stacked = summary![1].split(', ')
      const notStarted = summary![3].split(', ')
      expect(summary![2]).to.equal('none')
      expect(stacked.length).to.be.at.least(3)
      expect(notStarted.length).to.be.at.least(1)
      expect(stacked.length + notStarted.length).to.equal(names.length)
      const mounted = new Set((await mountsUnder(box.stacks)).map((mountpoint) => path.basename(mountpoint)))
      expect([...mounted].sort()).to.deep.equal([...stacked].sort())
      expect((await fs.readdir(box.stacks)).sort()).to.deep.equal([...stacked].sort())
      expect(run.stdout.split('\n')).to.deep.equal(stacked.map((name) => `1 wafer stacked at ${box.stack(name)}`))
    })
  })
})

async function expectSuccess(box: Sandbox, args: string[]): Promise<void> {
  const run = await box.run(args)
  expect(run.exitCode, `wafers ${args.join(' ')}: ${run.stderr}`).to.equal(0)
}

async function mountsUnder(dir: string): Promise<string[]> {
  return (await readMountTable())
    .map((entry) => entry.mountpoint)
    .filter((mountpoint) => mountpoint.startsWith(dir + '/'))
}

describe("a store made by wafers is root's alone", function () {
  let box: Sandbox
  useSandbox((made) => {
    box = made
  })

  it('makes $WAFERS and $STACKS 0700, so the device nodes and setuid files images bring reach no other user', async () => {
    const made = await box.run(['stack', 'tiny', '--seed', 'busybox'])
    expect(made.exitCode, made.stderr).to.equal(0)
    const {statSync} = await import('node:fs')
    expect(statSync(box.wafers).mode & 0o7777).to.equal(0o700)
    expect(statSync(box.stacks).mode & 0o7777).to.equal(0o700)
  })
})
