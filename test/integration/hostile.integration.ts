// Issue #10: a hostile store (anyone may write to $WAFERS), processes in other namespaces, and
// faults. Each test here failed before the fix it names.
import {expect} from 'chai'
import {type ResultPromise, execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {readMountTable} from '../../src/lib/host/mounts.js'
import {hasStackTrace, said, Sandbox, snapshot, useSandbox} from '../helpers/sandbox.js'
import {swapInLoop} from '../helpers/swapper.js'

const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))
const fixtures = fileURLToPath(new URL('../fixtures', import.meta.url))

const sleep = (ms: number) =>
  new Promise((resolve) => {
    setTimeout(resolve, ms)
  })

/** Waits until `check` holds, for up to `ms`. */
async function until(check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await check()) return
    await sleep(50)
  }

  throw new Error('timed out waiting')
}

const exists = (file: string) =>
  fs.lstat(file).then(
    () => true,
    () => false,
  )

describe('a hostile store and processes wafers cannot see in its mount table (issue #10)', function () {
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  async function ok(args: string[], env: Record<string, string> = {}): Promise<string> {
    const run = await box.run(args, env)
    expect(run.exitCode, `wafers ${args.join(' ')}: ${run.stderr}`).to.equal(0)
    return run.stdout
  }

  async function family(): Promise<void> {
    await box.wafer('base', {files: {'etc/os-release': 'ID=test\n'}})
    await box.wafer('child', {files: {'app/precious': 'keep\n'}, parent: 'base'})
  }

  /** Stages of creates under way or abandoned. */
  const stages = async () => (await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.create-'))

  describe('rm and stack see wafers still in use through a detached or hidden stack', function () {
    const containers: Array<{how: string; start: (box: Sandbox) => ResultPromise}> = [
      {
        // The stack is detached in the container's namespace too (umount propagates to a slave).
        how: 'working in it from a mount namespace that follows the host',
        start: (box) =>
          execa('unshare', ['-m', '--propagation', 'slave', 'sleep', '60'], {
            cwd: box.stack('child', 'app'),
            reject: false,
          }),
      },
      {
        // The container's namespace keeps its own copy of the mount: only its mount table shows it.
        how: 'chrooted into it from a private mount namespace',
        start: (box) =>
          execa('unshare', ['-m', '--propagation', 'private', 'chroot', box.stack('child'), '/bin/sleep', '60'], {
            reject: false,
          }),
      },
    ]

    for (const container of containers) {
      it(`refuses rm, rm --recursive and stack after unstack --lazy, naming a process ${container.how}`, async function () {
        await ok(['create', 'base', '--seed', 'busybox'])
        await box.wafer('child', {files: {'app/precious': 'keep\n'}, parent: 'base'})
        await ok(['stack', 'child'])
        const sleeper = container.start(box)
        try {
          await sleep(300)
          expect((await box.run(['unstack', 'child'])).exitCode).to.equal(1)
          await ok(['unstack', '--lazy', 'child'])
          expect(await box.mountOf('child')).to.equal(undefined)
          const before = await snapshot(box.wafers)
          for (const args of [
            ['rm', '--yes', 'child'],
            ['rm', '--yes', '--recursive', 'base'],
          ]) {
            const run = await box.run(args)
            expect(run.exitCode, run.stderr).to.equal(1)
            expect(said(run.stderr)).to.match(
              /wafer (child|base)(, in the subtree to remove,)? is still in use as (the top|a layer) of .*\(sleep\); nothing removed\./,
            )
            expect(said(run.stderr)).to.include(`${sleeper.pid} (sleep)`)
            expect(hasStackTrace(run.stderr)).to.equal(false)
          }

          // base is a lower layer of the hidden stack: it must not become a writable top now.
          const stack = await box.run(['stack', 'base'])
          expect(stack.exitCode, stack.stderr).to.equal(1)
          expect(said(stack.stderr)).to.match(/base is a lower layer of .*\(sleep\)/)
          expect(await snapshot(box.wafers)).to.deep.equal(before)
          expect(await fs.readFile(box.data('child', 'app', 'precious'), 'utf8')).to.equal('keep\n')
        } finally {
          sleeper.kill('SIGKILL')
          await sleeper
        }

        // Once the container is gone, so is the stack: rm goes ahead.
        await until(async () => (await box.run(['rm', '--yes', '--recursive', 'base'])).exitCode === 0)
        expect(await exists(box.data('child'))).to.equal(false)
      })
    }

    it('refuses rm after unstack --lazy when the stack is mounted only in a namespace no process is in', async function () {
      await family()
      await ok(['stack', 'child'])
      const ns = path.join(box.root, 'ns')
      await fs.mkdir(ns)
      await execa('mount', ['--bind', ns, ns])
      await execa('mount', ['--make-private', ns])
      await fs.writeFile(path.join(ns, 'mnt'), '')
      try {
        // The namespace lives on through the nsfs bind mount at ns/mnt, with the stack in it.
        // (unshare's bind of the new namespace fails now and then with EINVAL: try again.)
        const elsewhere = path.join(box.root, 'elsewhere')
        await fs.mkdir(elsewhere)
        const pin = ['--propagation', 'private', 'mount', '--bind', box.stack('child'), elsewhere]
        await until(
          async () =>
            (await execa('unshare', [`--mount=${path.join(ns, 'mnt')}`, ...pin], {reject: false})).exitCode === 0,
        )
        await ok(['unstack', '--lazy', 'child'])
        expect(await box.mountOf('child')).to.equal(undefined)
        const before = await snapshot(box.wafers)
        const run = await box.run(['rm', '--yes', 'child'])
        expect(run.exitCode, run.stderr).to.equal(1)
        expect(said(run.stderr)).to.include(`kept by ${path.join(ns, 'mnt')}, which no process is in`)
        expect(hasStackTrace(run.stderr)).to.equal(false)
        expect(await snapshot(box.wafers)).to.deep.equal(before)
      } finally {
        await execa('umount', ['--lazy', path.join(ns, 'mnt')], {reject: false})
        await execa('umount', ['--lazy', ns], {reject: false})
      }
    })

    for (const how of [
      'a bind mount of part of the wafer',
      'a bind mount of part of its stack, after unstack --lazy',
    ]) {
      it(`refuses rm of a wafer with ${how}`, async function () {
        await family()
        const elsewhere = path.join(box.root, 'elsewhere')
        await fs.mkdir(elsewhere)
        if (how.includes('stack')) {
          await ok(['stack', 'child'])
          await execa('mount', ['--bind', box.stack('child', 'app'), elsewhere])
          await ok(['unstack', '--lazy', 'child'])
        } else {
          await execa('mount', ['--bind', box.data('child', 'app'), elsewhere])
        }

        try {
          const before = await snapshot(box.wafers)
          const run = await box.run(['rm', '--yes', 'child'])
          expect(run.exitCode, run.stderr).to.equal(1)
          expect(said(run.stderr)).to.include(`at ${elsewhere}`)
          expect(await snapshot(box.wafers)).to.deep.equal(before)
          expect(await fs.readFile(path.join(elsewhere, 'precious'), 'utf8')).to.equal('keep\n')
        } finally {
          await execa('umount', ['--lazy', elsewhere], {reject: false})
        }
      })
    }

    it('stack refuses a wafer that is the top of a detached stack kept only by an open file', async function () {
      await box.wafer('base', {files: {'etc/os-release': 'ID=test\n'}})
      await box.wafer('web', {parent: 'base'})
      await ok(['stack', 'web'])
      const writer = execa('sh', ['-c', 'exec 3>>"$0" && exec sleep 60', box.stack('web', 'etc', 'log')], {
        reject: false,
      })
      try {
        await until(async () => exists(box.data('web', 'etc', 'log')))
        await ok(['unstack', '--lazy', 'web'])
        const run = await box.run(['stack', 'app', 'web'])
        expect(run.exitCode, run.stderr).to.equal(1)
        expect(said(run.stderr)).to.include('would make a wafer both a writable top and a lower layer')
        expect(said(run.stderr)).to.include(`${writer.pid} (sleep)`)
        expect(await box.mountOf('app')).to.equal(undefined)
      } finally {
        writer.kill('SIGKILL')
        await writer
      }
    })

    it('refuses rm of a wafer a process works in directly, from another mount namespace', async function () {
      await family()
      const sleeper = execa('unshare', ['-m', '--propagation', 'private', 'sleep', '60'], {
        cwd: box.data('child', 'app'),
        reject: false,
      })
      try {
        await sleep(300)
        const run = await box.run(['rm', '--yes', 'child'])
        expect(run.exitCode, run.stderr).to.equal(1)
        expect(said(run.stderr)).to.include(
          `wafer child is still in use through its own files, used by ${sleeper.pid} (sleep); nothing removed.`,
        )
        expect(await exists(box.data('child', 'app', 'precious'))).to.equal(true)
      } finally {
        sleeper.kill('SIGKILL')
        await sleeper
      }
    })
  })

  describe('staging is judged by a lock, never by a PID', function () {
    it('never sweeps the stage of a create running in another PID namespace', async function () {
      await box.wafer('base')
      await linkAlpha(box)
      // The create gets a PID that is free on the host (as a container's often is): a PID-named
      // stage would be taken for abandoned by the host's next create.
      const script = 'echo 3999999 > /proc/sys/kernel/ns_last_pid; "$0" "$@"; exit $?'
      const args = [bin, 'create', 'slow', '--seed', 'alpha-writer', '--', '40']
      const inside = execa(
        'unshare',
        ['--pid', '--fork', '--mount-proc', 'sh', '-c', script, process.execPath, ...args],
        {
          env: box.env,
          reject: false,
        },
      )
      await until(async () => (await stages()).length === 1)
      await ok(['create', 'other', 'base'])
      const run = await inside
      expect(run.exitCode, run.stderr).to.equal(0)
      expect((await fs.readFile(box.data('slow', 'grow'), 'utf8')).split('\n').filter(Boolean)).to.have.length(40)
      expect(await stages()).to.deep.equal([])
    })

    it('never sweeps a stage whose lock is held, and sweeps it once it is not', async function () {
      await box.wafer('base')
      const stage = path.join(box.wafers, '.create-ghost-0123456789ab')
      await fs.mkdir(path.join(stage, 'data'), {recursive: true})
      await fs.writeFile(path.join(stage, 'data', 'file'), 'being written\n')
      const holder = holdLock(stage)
      try {
        await sleep(300)
        await ok(['create', 'one', 'base'])
        expect(await fs.readFile(path.join(stage, 'data', 'file'), 'utf8')).to.equal('being written\n')
      } finally {
        holder.kill('SIGKILL')
        await holder
      }

      await ok(['create', 'two', 'base'])
      expect(await exists(stage)).to.equal(false)
    })
  })

  describe("a seeder's programs end with wafers, however wafers ends", function () {
    for (const signal of ['SIGKILL', 'SIGHUP', 'SIGTERM'] as const) {
      it(`stops the writing program when create --seed gets ${signal}, and the next create removes the stage`, async function () {
        await box.wafer('base')
        await linkAlpha(box)
        const create = execa(process.execPath, [bin, 'create', 'big', '--seed', 'alpha-writer', '--', 'forever'], {
          env: box.env,
          reject: false,
        })
        let grow = ''
        await until(async () => {
          const [stage] = await stages()
          grow = stage === undefined ? '' : path.join(box.wafers, stage, 'data', 'grow')
          return grow !== '' && (await exists(grow))
        })
        create.kill(signal)
        const run = await create
        if (signal !== 'SIGKILL') {
          expect(run.exitCode, run.stderr).to.equal(signal === 'SIGHUP' ? 129 : 143)
          expect(said(run.stderr)).to.include(
            `seeder alpha-writer was interrupted by ${signal}; wafer big was not created.`,
          )
        }

        await sleep(300)
        const size = (await fs.stat(grow).catch(() => ({size: -1}))).size
        await sleep(400)
        expect((await fs.stat(grow).catch(() => ({size: -1}))).size, 'the program still writes').to.equal(size)
        await ok(['create', 'next', 'base'])
        expect(await stages()).to.deep.equal([])
        expect(await exists(box.data('big'))).to.equal(false)
      })
    }

    it('leaves a stage alone while a program it started still writes there, even after wafers was killed', async function () {
      await box.wafer('base')
      await linkAlpha(box)
      const create = execa(
        process.execPath,
        [bin, 'create', 'big', '--seed', 'alpha-writer', '--', 'forever', 'detach'],
        {
          env: box.env,
          reject: false,
        },
      )
      let data = ''
      await until(async () => {
        const [stage] = await stages()
        data = stage === undefined ? '' : path.join(box.wafers, stage, 'data')
        return data !== '' && (await exists(path.join(data, 'grand.pid')))
      })
      create.kill('SIGKILL')
      await create
      const writer = Number((await fs.readFile(path.join(data, 'grand.pid'), 'utf8')).trim())
      try {
        await ok(['create', 'next', 'base'])
        expect(await exists(path.join(data, 'grand')), 'the stage was deleted under a writer').to.equal(true)
      } finally {
        process.kill(writer, 'SIGKILL')
      }

      await sleep(200)
      await ok(['create', 'later', 'base'])
      expect(await stages()).to.deep.equal([])
    })
  })

  describe('cleanup never goes through a symlink', function () {
    it('leaves alone a directory that symlinks named like a stage or trash point at, and what is mounted there', async function () {
      await box.wafer('base')
      await box.wafer('gone')
      const victim = path.join(box.root, 'victim')
      await fs.mkdir(path.join(victim, 'mnt'), {recursive: true})
      await fs.writeFile(path.join(victim, 'precious'), 'keep\n')
      await execa('mount', ['-t', 'tmpfs', 'tmpfs', path.join(victim, 'mnt')])
      await fs.symlink(victim, path.join(box.wafers, '.create-x-999999-deadbeef'))
      await fs.symlink(victim, path.join(box.wafers, '.create-y-0123456789ab'))
      await fs.symlink(victim, path.join(box.wafers, '.rm-y-deadbeef'))
      await ok(['create', 'kid', 'base'])
      await ok(['rm', '--yes', 'gone'])
      expect(await fs.readFile(path.join(victim, 'precious'), 'utf8')).to.equal('keep\n')
      expect((await readMountTable()).some((entry) => entry.mountpoint === path.join(victim, 'mnt'))).to.equal(true)
    })
  })

  describe('cleanup holds on to the directory it checked', function () {
    async function victimWithMount(): Promise<string> {
      const victim = path.join(box.root, 'victim')
      await fs.mkdir(path.join(victim, 'mnt'), {recursive: true})
      await fs.writeFile(path.join(victim, 'precious'), 'keep\n')
      await execa('mount', ['-t', 'tmpfs', 'tmpfs', path.join(victim, 'mnt')])
      return victim
    }

    const mounted = async (dir: string) => (await readMountTable()).some((entry) => entry.mountpoint === dir)

    for (const {how, name, act} of [
      {act: (i: number) => ['rm', '--yes', `g${i}`], how: 'rm sweeping a trash entry', name: '.rm-y-deadbeef'},
      {act: (i: number) => ['create', `k${i}`], how: 'create sweeping a stage', name: '.create-y-0123456789ab'},
    ]) {
      it(`${how} never unmounts or deletes outside the store while the entry is swapped with a symlink`, async function () {
        const victim = await victimWithMount()
        const swapper = swapInLoop(path.join(box.wafers, name), victim)
        try {
          for (let i = 0; i < 8; i++) {
            await box.wafer(`g${i}`)
            await box.run(act(i))
            if (!(await mounted(path.join(victim, 'mnt')))) break
          }
        } finally {
          await swapper.stop()
        }

        expect(await mounted(path.join(victim, 'mnt')), 'the tmpfs outside the store is still mounted').to.equal(true)
        expect(await fs.readFile(path.join(victim, 'precious'), 'utf8')).to.equal('keep\n')
      })
    }

    it('create never chmods, writes or renames through a staging directory swapped for a symlink', async function () {
      await box.wafer('base')
      await linkAlpha(box)
      const victim = path.join(box.root, 'victim')
      await fs.mkdir(victim, {mode: 0o700})
      await fs.writeFile(path.join(victim, 'secret'), 'keep\n', {mode: 0o600})
      const creating = box.run(['create', 'slow', '--seed', 'alpha-writer', '--', '40'])
      // Once the stage has its data directory it is made and held (a swap before that is refused
      // too, with another message: the stage "was moved out of the store as it was made").
      await until(async () => {
        const made = await stages()
        return made.length === 1 && exists(path.join(box.wafers, made[0], 'data'))
      })
      const [stage] = await stages()
      await fs.rename(path.join(box.wafers, stage), path.join(box.root, 'moved'))
      await fs.symlink(victim, path.join(box.wafers, stage))
      const run = await creating
      expect(run.exitCode, run.stderr).to.not.equal(0)
      expect(said(run.stderr)).to.include(
        'was replaced by something else while wafer slow was made; slow was not created.',
      )
      expect((await fs.stat(victim)).mode & 0o7777, 'the mode of the directory outside the store').to.equal(0o700)
      expect((await fs.readdir(victim)).sort()).to.deep.equal(['secret'])
      expect(await exists(path.join(box.wafers, 'slow'))).to.equal(false)
    })
  })

  describe('files wafers writes outside the store', function () {
    it('enable never writes through a symlink planted at a temporary name', async function () {
      await box.wafer('base')
      const units = path.join(box.root, 'units')
      const nspawn = path.join(box.root, 'nspawn')
      await fs.mkdir(units)
      await fs.mkdir(nspawn)
      const victim = path.join(box.root, 'victim')
      await fs.writeFile(victim, 'keep\n')
      for (const dir of [units, nspawn]) {
        for (const name of ['wafers-stack-base.service', 'base.nspawn']) {
          await fs.symlink(victim, path.join(dir, `${name}.wafers-tmp`))
        }
      }

      await ok(['enable', 'base'], {WAFERS_NSPAWN_DIR: nspawn, WAFERS_UNIT_DIR: units})
      expect(await fs.readFile(victim, 'utf8')).to.equal('keep\n')
      const unit = path.join(units, 'wafers-stack-base.service')
      expect((await fs.lstat(unit)).isFile()).to.equal(true)
      expect(await fs.readFile(unit, 'utf8')).to.include('ExecStart=')
    })
  })

  describe('the lock and hostile files never hang wafers', function () {
    it('locks the real store when WAFERS is a symlink: parallel stacks make one mount', async function () {
      await box.wafer('base', {files: {'etc/os-release': 'ID=test\n'}})
      const link = path.join(box.root, 'link')
      await fs.symlink(box.wafers, link)
      const runs = await Promise.all(Array.from({length: 8}, () => box.run(['stack', 'web', 'base'], {WAFERS: link})))
      expect(runs.filter((run) => run.exitCode === 0).length, 'stacks that succeeded').to.be.at.least(1)
      const mounts = (await readMountTable()).filter((entry) => entry.mountpoint === box.stack('web'))
      expect(mounts, 'overlays mounted at the stack').to.have.length(1)
      expect(await fs.readFile(box.stack('web', 'etc/os-release'), 'utf8')).to.equal('ID=test\n')
    })

    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
      it(`ends at once on ${signal} while waiting for the store lock`, async function () {
        await box.wafer('base')
        const holder = holdLock(box.wafers)
        try {
          await sleep(300)
          const waiting = execa(process.execPath, [bin, 'stack', 'base'], {env: box.env, reject: false})
          let stderr = ''
          waiting.stderr?.on('data', (chunk: Buffer) => {
            stderr += chunk.toString()
          })
          await until(async () => stderr.includes('waiting for another wafers command'))
          const sent = Date.now()
          waiting.kill(signal)
          const run = await waiting
          expect(Date.now() - sent).to.be.below(5000)
          expect(run.exitCode).to.equal({SIGHUP: 129, SIGINT: 130, SIGTERM: 143}[signal])
          expect(said(run.stderr)).to.include(
            `interrupted while waiting for the lock on ${box.wafers}; nothing was done.`,
          )
          expect(await box.mountOf('base')).to.equal(undefined)
        } finally {
          holder.kill('SIGKILL')
          await holder
        }
      })
    }

    it('reads no FIFO, device or huge file as a parent file, in stack, list, tree, rm and create', async function () {
      await box.wafer('base')
      await box.wafer('fifo')
      await execa('mkfifo', [path.join(box.wafers, 'fifo', 'parent')])
      await box.wafer('huge')
      await fs.writeFile(path.join(box.wafers, 'huge', 'parent'), '')
      await fs.truncate(path.join(box.wafers, 'huge', 'parent'), 600 * 1024 * 1024)
      await box.wafer('dev')
      await fs.symlink('/dev/zero', path.join(box.wafers, 'dev', 'parent'))
      const runs = await Promise.all([
        box.run(['stack', 'fifo']),
        box.run(['stack', 'huge']),
        box.run(['stack', 'dev']),
        box.run(['list']),
        box.run(['tree']),
        box.run(['rm', '--yes', 'base']),
        box.run(['create', 'kid', 'fifo']),
      ])
      expect(said(runs[0].stderr)).to.include('the parent file of wafer fifo is not a regular file.')
      expect(said(runs[1].stderr)).to.match(
        /the parent file of wafer huge is \d+ bytes, more than the 1048576 wafers reads\./,
      )
      expect(said(runs[2].stderr)).to.include('the parent file of wafer dev is a symlink; wafers does not follow it.')
      expect(runs[3].exitCode, runs[3].stderr).to.equal(0)
      expect(runs[3].stdout).to.match(/fifo/)
      expect(runs[4].exitCode, runs[4].stderr).to.equal(0)
      expect(runs[5].exitCode, runs[5].stderr).to.equal(0)
      expect(runs[6].exitCode).to.equal(1)
      for (const run of runs) expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
    })
  })

  describe('messages: one sentence saying what and where', function () {
    it('rm names the file it could not delete and why (EPERM of an immutable file, not ENOTDIR)', async function () {
      await box.wafer('base', {files: {'etc/passwd': 'root:x:0:0::/root:/bin/sh\n'}})
      const file = box.data('base', 'etc', 'passwd')
      await execa('chattr', ['+i', file])
      try {
        const run = await box.run(['rm', '--yes', 'base'])
        expect(run.exitCode, run.stderr).to.equal(1)
        const text = said(run.stderr)
        expect(text).to.match(
          /wafer base is gone from the store, but .*\/etc\/passwd \(operation not permitted: it may be immutable or append-only, see lsattr\) could not be deleted; what is left is in .*\/\.rm-base-[0-9a-f]+, which the next wafers rm deletes\.$/,
        )
        expect(text).to.not.match(/ENOTDIR|scandir|EPERM/)
        expect(hasStackTrace(run.stderr)).to.equal(false)
      } finally {
        const trash = (await fs.readdir(box.wafers)).find((entry) => entry.startsWith('.rm-base-'))
        const stuck = trash === undefined ? file : path.join(box.wafers, trash, 'data', 'etc', 'passwd')
        await execa('chattr', ['-i', stuck], {reject: false})
      }

      await box.wafer('other')
      await ok(['rm', '--yes', 'other'])
      expect((await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.rm-'))).to.deep.equal([])
    })

    it('says WAFERS is not a directory', async function () {
      await fs.writeFile(path.join(box.root, 'a-file'), 'x')
      for (const args of [['list'], ['stack', 'x', 'y'], ['create', 'x'], ['rm', '--yes', 'x']]) {
        const run = await box.run(args, {WAFERS: path.join(box.root, 'a-file')})
        expect(run.exitCode, args.join(' ')).to.equal(1)
        expect(said(run.stderr)).to.include(`WAFERS is ${path.join(box.root, 'a-file')}, which is not a directory.`)
        expect(run.stderr).to.not.match(/ENOTDIR|scandir/)
      }
    })

    it('says the store is on a read-only file system', async function () {
      await box.wafer('base')
      await execa('mount', ['--bind', '-o', 'ro', box.wafers, box.wafers])
      for (const args of [
        ['stack', 'child', 'base'],
        ['create', 'kid', 'base'],
      ]) {
        const run = await box.run(args)
        expect(run.exitCode, args.join(' ')).to.equal(1)
        expect(said(run.stderr), args.join(' ')).to.match(/cannot be written: it is on a read-only file system\./)
        expect(run.stderr).to.not.match(/EROFS|errno/)
        expect(hasStackTrace(run.stderr)).to.equal(false)
      }
    })

    it('says the disk is full while seeding in one sentence, and leaves nothing', async function () {
      const source = path.join(box.root, 'source')
      await fs.mkdir(source)
      for (let i = 0; i < 200; i++) {
        await fs.writeFile(path.join(source, `file${i}`), Buffer.alloc(64 * 1024, 1))
      }

      await fs.mkdir(box.wafers)
      await execa('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', box.wafers])
      const run = await box.run(['create', 'big', '--seed', 'dir', '--', source])
      expect(run.exitCode).to.equal(1)
      expect(said(run.stderr)).to.include(
        `no space is left on the file system of ${box.wafers}: seeder dir could not fill wafer big, which was not created.`,
      )
      expect(run.stderr.split('\n').filter((line) => line.includes('cp:')).length).to.be.below(3)
      expect(run.stderr).to.not.match(/ENOSPC/)
      expect(await fs.readdir(box.wafers)).to.deep.equal([])
    })

    it('unstack where the stack is not mounted leaves the mount point alone: it detaches nothing in other namespaces', async function () {
      await box.wafer('base', {files: {'etc/os-release': 'ID=test\n'}})
      await ok(['stack', 'base'])
      const inside = await execa(
        'unshare',
        [
          '-m',
          '--propagation',
          'private',
          'sh',
          '-c',
          'umount "$0" && exec "$1" "$2" unstack base',
          box.stack('base'),
          process.execPath,
          bin,
        ],
        {env: box.env, reject: false},
      )
      expect(inside.exitCode, inside.stderr).to.equal(0)
      expect(await box.mountOf('base'), "the host's stack").to.not.equal(undefined)
      expect(await fs.readFile(box.stack('base', 'etc/os-release'), 'utf8')).to.equal('ID=test\n')
    })
  })
})

async function linkAlpha(box: Sandbox): Promise<void> {
  const run = await box.run(['plugins', 'link', '--no-install', path.join(fixtures, 'plugin-alpha')])
  expect(run.exitCode, run.stderr).to.equal(0)
}

/** A process holding the flock on `dir` until it is killed (one process: no child keeps the lock). */
function holdLock(dir: string): ResultPromise {
  return execa('sh', ['-c', 'exec 9<"$0" && flock 9 && exec sleep 60', dir], {reject: false})
}

describe('what crosses the wire: the gaps left by issue #20', function () {
  this.timeout(120_000)
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  /** Whether `pid` is gone (or a zombie, which runs nothing). */
  const gone = async (pid: number) => {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
    return stat === '' || / Z /.test(stat.slice(stat.lastIndexOf(')')))
  }

  it('a kill -9 during an unpack leaves no mkfifo of its running', async function () {
    // A mkfifo on PATH that says it started and then takes a minute, as a stuck one would.
    const slowBin = path.join(box.root, 'slow-bin')
    const pidFile = path.join(box.root, 'mkfifo.pid')
    await fs.mkdir(slowBin)
    await fs.writeFile(path.join(slowBin, 'mkfifo'), `#!/bin/sh\necho $$ > ${pidFile}\nexec sleep 60\n`, {mode: 0o755})
    const context = path.join(box.root, 'context')
    await fs.mkdir(context)
    await execa('python3', [
      '-c',
      'import sys, tarfile\nwith tarfile.open(sys.argv[1], "w") as t:\n  i = tarfile.TarInfo("pipe"); i.type = tarfile.FIFOTYPE; t.addfile(i)',
      path.join(context, 'fifo.tar'),
    ])
    await fs.writeFile(path.join(context, 'Containerfile'), 'FROM scratch\nADD fifo.tar /\n')
    const build = execa(process.execPath, [bin, 'build', '-t', 'web', context], {
      env: {...box.env, PATH: `${slowBin}:${box.env.PATH}`},
      reject: false,
    })
    await until(async () => (await fs.readFile(pidFile, 'utf8').catch(() => '')).endsWith('\n'))
    const pid = Number((await fs.readFile(pidFile, 'utf8')).trim())
    build.kill('SIGKILL')
    await build
    try {
      await until(async () => gone(pid), 5000)
    } finally {
      if (!(await gone(pid))) process.kill(pid, 'SIGKILL')
    }
  })
})
