import {getAttributeSync} from '@napi-rs/xattr'
import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {Sandbox, hasStackTrace, snapshot, useSandbox} from '../helpers/sandbox.js'

describe('wafers list, tree, diff and rm (real trees, real mounts)', function () {
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  async function ok(args: string[]): Promise<string> {
    const run = await box.run(args)
    expect(run.exitCode, `wafers ${args.join(' ')}: ${run.stderr}`).to.equal(0)
    return run.stdout
  }

  /** base <- mid <- top (stacked), base <- side; a base alone, stacked; an orphan. */
  async function forest(): Promise<void> {
    await box.wafer('base', {files: {'etc/os': 'base\n'}})
    await box.wafer('mid', {parent: 'base'})
    await box.wafer('top', {parent: 'mid'})
    await box.wafer('side', {parent: 'base'})
    await box.wafer('alone', {files: {big: 'x'.repeat(100_000)}})
    await box.wafer('orphan', {parent: 'gone'})
    await ok(['stack', 'top'])
    await ok(['stack', 'alone'])
  }

  describe('list', function () {
    it('prints a table of every wafer with parent, depth, stacked state and mount point', async function () {
      await forest()
      const cells = (await ok(['list', '--no-size'])).split('\n').map((line) => line.split(/ {2,}/))
      expect(cells).to.deep.equal([
        ['NAME', 'PARENT', 'DEPTH', 'STACKED', 'MOUNTPOINT', 'NOTE'],
        ['alone', '-', '1', 'yes', box.stack('alone')],
        ['base', '-', '1', 'lower', '-'],
        ['mid', 'base', '2', 'lower', '-'],
        ['orphan', 'gone', '1', 'no', '-', 'its parent gone does not exist'],
        ['side', 'base', '2', 'no', '-'],
        ['top', 'mid', '3', 'yes', box.stack('top')],
      ])
    })

    it('prints objects with name, parent, depth, stacked and mountpoint with --json, and answers to ls', async function () {
      await forest()
      const wafers = JSON.parse(await ok(['ls', '--json']))
      expect(wafers).to.deep.equal([
        {
          depth: 1,
          inUse: true,
          lowerOf: [],
          mountpoint: box.stack('alone'),
          name: 'alone',
          parent: null,
          stacked: true,
        },
        {
          depth: 1,
          inUse: true,
          lowerOf: [box.stack('top')],
          mountpoint: null,
          name: 'base',
          parent: null,
          stacked: false,
        },
        {
          depth: 2,
          inUse: true,
          lowerOf: [box.stack('top')],
          mountpoint: null,
          name: 'mid',
          parent: 'base',
          stacked: false,
        },
        {
          depth: 1,
          inUse: false,
          lowerOf: [],
          mountpoint: null,
          name: 'orphan',
          parent: 'gone',
          problem: 'its parent gone does not exist',
          stacked: false,
        },
        {depth: 2, inUse: false, lowerOf: [], mountpoint: null, name: 'side', parent: 'base', stacked: false},
        {depth: 3, inUse: true, lowerOf: [], mountpoint: box.stack('top'), name: 'top', parent: 'mid', stacked: true},
      ])
    })

    it('shows a stack mounted only in another mount namespace as in use, as stack and rm refuse it', async function () {
      await box.wafer('base', {files: {'etc/os': 'base\n'}})
      await box.wafer('top', {parent: 'base'})
      await box.wafer('side', {parent: 'base'})
      const target = path.join(box.root, 'elsewhere')
      await fs.mkdir(target)
      await fs.mkdir(path.join(box.wafers, 'top', 'work'))
      const options = `lowerdir=${box.data('base')},upperdir=${box.data('top')},workdir=${path.join(box.wafers, 'top', 'work')}`
      // A container's namespace: the overlay is in its mount table only, never in ours.
      const child = execa(
        'unshare',
        [
          '-m',
          '--propagation',
          'private',
          'sh',
          '-c',
          'mount -t overlay overlay -o "$1" "$2" && echo up && exec sleep 60',
          'sh',
          options,
          target,
        ],
        {reject: false},
      )
      try {
        await new Promise<void>((resolve, reject) => {
          child.stdout!.on('data', () => resolve())
          child.on('exit', () => reject(new Error('the child namespace did not mount the overlay')))
        })
        expect(await box.mountOf('top')).to.equal(undefined)
        const where = `the stack mounted at ${target} in the mount namespace of ${child.pid} (sleep)`
        const wafers = JSON.parse(await ok(['list', '--json'])) as Array<Record<string, unknown>>
        const byName = new Map(wafers.map((wafer) => [wafer.name, wafer]))
        expect(byName.get('top')).to.include({inUse: true, mountpoint: null, stacked: true})
        expect(byName.get('top')!.elsewhere).to.deep.equal([{how: `still in use as the top of ${where}`, role: 'top'}])
        expect(byName.get('base')).to.include({inUse: true, stacked: false})
        expect(byName.get('base')!.elsewhere).to.deep.equal([
          {how: `still in use as a layer of ${where}`, role: 'lower'},
        ])
        expect(byName.get('side')).to.deep.include({inUse: false, stacked: false})
        expect(byName.get('side')).not.to.have.property('elsewhere')

        const cells = (await ok(['list', '--no-size'])).split('\n').map((line) => line.split(/ {2,}/))
        expect(cells).to.deep.equal([
          ['NAME', 'PARENT', 'DEPTH', 'STACKED', 'MOUNTPOINT', 'NOTE'],
          ['base', '-', '1', 'lower', '-', `still in use as a layer of ${where}`],
          ['side', 'base', '2', 'no', '-'],
          ['top', 'base', '2', 'yes', '-', `still in use as the top of ${where}`],
        ])

        expect((await ok(['tree'])).split('\n')).to.deep.equal([
          `base (still in use as a layer of ${where})`,
          '├── side',
          `└── top (still in use as the top of ${where})`,
        ])

        // What list calls in use, stack and rm refuse.
        const stack = await box.run(['stack', 'top'])
        expect(stack.exitCode).to.equal(1)
        expect(stack.stderr).to.include(`top is already the top of ${where}`)
        const rm = await box.run(['rm', '--yes', 'top'])
        expect(rm.exitCode).to.equal(1)
        expect(await fs.readdir(box.wafers)).to.include('top')
      } finally {
        child.kill()
        await child
      }

      // Once the namespace is gone, nothing is in use.
      const after = JSON.parse(await ok(['list', '--json'])) as Array<{inUse: boolean}>
      expect(after.map((wafer) => wafer.inUse)).to.deep.equal([false, false, false])
    })

    it('measures the size on disk in the table, and in --json only with --size', async function () {
      await forest()
      const table = (await ok(['list'])).split('\n')
      expect(table[0]).to.match(/^NAME +PARENT +DEPTH +STACKED +MOUNTPOINT +SIZE +NOTE$/)
      expect(table[1]).to.match(/^alone .* (10\d|11\d)K$/)
      const sized = JSON.parse(await ok(['list', '--json', '--size'])) as Array<{name: string; size: number}>
      const alone = sized.find((wafer) => wafer.name === 'alone')!
      expect(alone.size).to.be.within(100_000, 120_000)
    })

    it('fits a terminal: long generated names shortened as git does, whole with --wide and in a pipe', async function () {
      const layer = `layer-${'0123456789abcdef'.repeat(2)}`
      const sibling = `layer-0123456789ab${'f'.repeat(20)}`
      const step = `build-${'9'.repeat(40)}`
      await box.wafer(layer)
      await box.wafer(sibling)
      await box.wafer(step, {parent: layer})
      await box.wafer('web', {parent: step})
      const {exitCode, screen} = await box.inTerminal(['list', '--no-size'], 80)
      expect(exitCode, screen).to.equal(0)
      const lines = screen.split(/\r?\n/).filter((line) => line !== '')
      for (const line of lines) expect(line.length, line).to.be.at.most(80)
      expect(lines.map((line) => line.split(/ {2,}/))).to.deep.equal([
        ['NAME', 'PARENT', 'DEPTH', 'STACKED', 'MOUNTPOINT', 'NOTE'],
        ['build-99999999…', 'layer-0123456789abc…', '2', 'no', '-'],
        ['layer-0123456789abc…', '-', '1', 'no', '-'],
        ['layer-0123456789abf…', '-', '1', 'no', '-'],
        ['web', 'build-99999999…', '3', 'no', '-'],
      ])

      // A wide enough terminal, --wide, and a pipe get every name whole.
      const whole = [
        ['NAME', 'PARENT', 'DEPTH', 'STACKED', 'MOUNTPOINT', 'NOTE'],
        [step, layer, '2', 'no', '-'],
        [layer, '-', '1', 'no', '-'],
        [sibling, '-', '1', 'no', '-'],
        ['web', step, '3', 'no', '-'],
      ]
      for (const [args, columns] of [
        [['list', '--no-size'], 200],
        [['list', '--no-size', '--wide'], 80],
      ] as const) {
        const wide = await box.inTerminal([...args], columns)
        expect(
          wide.screen
            .split(/\r?\n/)
            .filter((line) => line !== '')
            .map((line) => line.split(/ {2,}/)),
        ).to.deep.equal(whole)
      }

      expect((await ok(['list', '--no-size'])).split('\n').map((line) => line.split(/ {2,}/))).to.deep.equal(whole)
    })

    it('says so when there are no wafers', async function () {
      expect(await ok(['list'])).to.equal(`no wafers in ${box.wafers}`)
      expect(JSON.parse(await ok(['list', '--json']))).to.deep.equal([])
    })
  })

  describe('tree', function () {
    it('draws the forest, marking stacked wafers and lower layers of live stacks', async function () {
      await forest()
      expect((await ok(['tree'])).split('\n')).to.deep.equal([
        `alone (stacked at ${box.stack('alone')})`,
        `base (lower layer of ${box.stack('top')})`,
        `├── mid (lower layer of ${box.stack('top')})`,
        `│   └── top (stacked at ${box.stack('top')})`,
        '└── side',
        'orphan (its parent gone does not exist)',
      ])
    })

    it('draws only the subtree under NAME', async function () {
      await forest()
      expect((await ok(['tree', 'mid'])).split('\n')).to.deep.equal([
        `mid (lower layer of ${box.stack('top')})`,
        `└── top (stacked at ${box.stack('top')})`,
      ])
    })

    it('prints nested objects with name, stacked and children with --json', async function () {
      await forest()
      const [mid] = JSON.parse(await ok(['tree', 'mid', '--json']))
      expect(mid).to.deep.equal({
        children: [{children: [], lowerOf: [], mountpoint: box.stack('top'), name: 'top', stacked: true}],
        lowerOf: [box.stack('top')],
        mountpoint: null,
        name: 'mid',
        stacked: false,
      })
    })

    it('refuses a NAME that does not exist', async function () {
      await forest()
      const run = await box.run(['tree', 'ghost'])
      expect(run.exitCode).to.equal(1)
      expect(run.stderr).to.include(`wafer ghost not found in ${box.wafers}.`)
    })
  })

  describe('diff', function () {
    it('shows what was added, changed and deleted through the mounted stack, stacked or not', async function () {
      await box.wafer('base', {
        files: {
          'etc/keep': 'k\n',
          'etc/motd': 'hi\n',
          'opt/dir/a': 'a\n',
          'opt/dir/b': 'b\n',
          'opt/dir/sub/c': 'c\n',
          rmme: 'x\n',
        },
      })
      await ok(['stack', 'child', 'base'])
      await fs.writeFile(box.stack('child', 'new'), 'n\n')
      await fs.writeFile(box.stack('child', 'etc', 'added'), 'a\n')
      await fs.appendFile(box.stack('child', 'etc', 'motd'), 'more\n')
      await fs.rm(box.stack('child', 'rmme'))
      await fs.rm(box.stack('child', 'opt', 'dir'), {recursive: true})
      await fs.mkdir(box.stack('child', 'opt', 'dir'))
      await fs.writeFile(box.stack('child', 'opt', 'dir', 'a'), 'a again\n')
      await fs.writeFile(box.stack('child', 'opt', 'dir', 'fresh'), 'f\n')
      // The kernel marked the recreated directory opaque: that is what diff must read.
      expect(getAttributeSync(box.data('child', 'opt', 'dir'), 'trusted.overlay.opaque')?.toString()).to.equal('y')
      const expected = [
        'C /etc',
        'A /etc/added',
        'C /etc/motd',
        'A /new',
        'C /opt',
        'C /opt/dir',
        'C /opt/dir/a',
        'D /opt/dir/b',
        'A /opt/dir/fresh',
        'D /opt/dir/sub',
        'D /rmme',
      ]
      expect((await ok(['diff', 'child'])).split('\n')).to.deep.equal(expected)
      await ok(['unstack', 'child'])
      expect((await ok(['diff', 'child'])).split('\n')).to.deep.equal(expected)
      const json = JSON.parse(await ok(['diff', 'child', '--json']))
      expect(json[0]).to.deep.equal({change: 'changed', path: '/etc'})
      expect(json.map((entry: {change: string}) => entry.change[0].toUpperCase())).to.deep.equal(
        expected.map((line) => line[0]),
      )
    })

    it('reads an opaque directory a userxattr mount made (user.overlay.opaque) as the kernel does', async function () {
      await box.wafer('base', {files: {'opt/dir/a': 'a\n', 'opt/dir/b': 'b\n'}})
      await box.wafer('child', {parent: 'base', work: true})
      const mounted = path.join(box.root, 'userxattr')
      await fs.mkdir(mounted)
      const layers = `lowerdir=${box.data('base')},upperdir=${box.data('child')},workdir=${path.join(box.wafers, 'child', 'work')}`
      await execa('mount', ['-t', 'overlay', 'overlay', '-o', `${layers},userxattr`, mounted])
      try {
        await fs.rm(path.join(mounted, 'opt', 'dir'), {recursive: true})
        await fs.mkdir(path.join(mounted, 'opt', 'dir'))
        await fs.writeFile(path.join(mounted, 'opt', 'dir', 'fresh'), 'f\n')
      } finally {
        await execa('umount', [mounted])
      }

      expect(getAttributeSync(box.data('child', 'opt', 'dir'), 'user.overlay.opaque')?.toString()).to.equal('y')
      expect(getAttributeSync(box.data('child', 'opt', 'dir'), 'trusted.overlay.opaque')).to.equal(null)
      expect((await ok(['diff', 'child'])).split('\n')).to.deep.equal([
        'C /opt',
        'C /opt/dir',
        'D /opt/dir/a',
        'D /opt/dir/b',
        'A /opt/dir/fresh',
      ])
    })

    it('compares with the merged wafers below: a deletion lower down counts, a base adds everything', async function () {
      await box.wafer('base', {files: {x: 'x\n', y: 'y\n'}})
      await ok(['stack', 'mid', 'base'])
      await fs.rm(box.stack('mid', 'x'))
      await ok(['unstack', 'mid'])
      await ok(['stack', 'top', 'mid'])
      await fs.writeFile(box.stack('top', 'x'), 'back\n')
      await fs.rm(box.stack('top', 'y'))
      expect((await ok(['diff', 'mid'])).split('\n')).to.deep.equal(['D /x'])
      expect((await ok(['diff', 'top'])).split('\n')).to.deep.equal(['A /x', 'D /y'])
      expect((await ok(['diff', 'base'])).split('\n')).to.deep.equal(['A /x', 'A /y'])
    })

    it('prints nothing for a wafer that changes nothing, and refuses a missing one', async function () {
      await box.wafer('base', {files: {x: 'x\n'}})
      await box.wafer('child', {parent: 'base'})
      expect(await ok(['diff', 'child'])).to.equal('')
      expect(JSON.parse(await ok(['diff', 'child', '--json']))).to.deep.equal([])
      const run = await box.run(['diff', 'ghost'])
      expect(run.exitCode).to.equal(1)
      expect(run.stderr).to.include(`wafer ghost not found in ${box.wafers}.`)
    })
  })

  describe('rm', function () {
    async function expectRefusal(args: string[], message: string): Promise<void> {
      const before = await snapshot(box.root)
      const run = await box.run(args)
      expect(run.exitCode, `exit code of wafers ${args.join(' ')}`).to.equal(1)
      expect(run.stdout).to.equal('')
      expect(run.stderr.replaceAll(/\s*\n\s*›\s*/g, ' ')).to.include(message)
      expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
      expect(await snapshot(box.root)).to.deep.equal(before)
    }

    it('refuses a stacked wafer', async function () {
      await forest()
      await expectRefusal(['rm', '--yes', 'top'], `wafer top is stacked at ${box.stack('top')}; unstack it first.`)
    })

    it('refuses a lower layer of a live stack, and a stacked wafer anywhere in a --recursive subtree', async function () {
      await forest()
      await expectRefusal(
        ['rm', '--yes', 'mid', 'top'],
        `wafer top is stacked at ${box.stack('top')}; unstack it first. Try this: wafers unstack top`,
      )
      const readOnly = path.join(box.root, 'read-only')
      await box.mountByHand(readOnly, ['side', 'base'])
      await expectRefusal(
        ['rm', '--yes', 'side'],
        `wafer side is a lower layer of the stack at ${readOnly}; unstack that first. Try this: umount ${readOnly}`,
      )
      await ok(['unstack', 'top'])
      await box.wafer('hand', {parent: 'mid'})
      const target = path.join(box.root, 'by-hand')
      await box.mountByHand(target, ['mid', 'base'], 'hand')
      await expectRefusal(
        ['rm', '--yes', '--recursive', 'mid'],
        `wafer hand, in the subtree to remove, is stacked at ${target}; unstack it first. Try this: umount ${target}`,
      )
    })

    it('refuses a wafer with children unless --recursive', async function () {
      await forest()
      await ok(['unstack', 'top'])
      await expectRefusal(
        ['rm', '--yes', 'base'],
        'wafer base has 2 children (mid, side) built on it; remove them first, or use --recursive to remove the whole subtree.',
      )
    })

    it('refuses to delete without --yes when stdin is not a terminal', async function () {
      await box.wafer('base')
      await expectRefusal(
        ['rm', 'base'],
        'stdin is not a terminal, so wafers rm cannot ask before deleting wafer base; add --yes to delete without asking.',
      )
    })

    it('refuses a missing wafer', async function () {
      await box.wafer('base')
      await expectRefusal(['rm', '--yes', 'base', 'ghost'], `wafer ghost not found in ${box.wafers}.`)
    })

    it('removes a subtree deepest first with --recursive --yes, with its short links, and keeps the rest', async function () {
      await forest()
      await ok(['unstack', 'top', 'alone'])
      await box.wafer('other', {parent: 'alone'})
      await ok(['stack', 'other'])
      await ok(['unstack', 'other'])
      const linksBefore = await fs.readdir(path.join(box.wafers, '.links'))
      expect(linksBefore).to.have.length(3) // mid, base, alone
      expect(await ok(['rm', '--recursive', '--yes', 'base'])).to.equal(
        ['removed top', 'removed mid', 'removed side', 'removed base'].join('\n'),
      )
      expect((await fs.readdir(box.wafers)).sort()).to.deep.equal(['.links', 'alone', 'orphan', 'other'])
      const links = await fs.readdir(path.join(box.wafers, '.links'))
      expect(await Promise.all(links.map((id) => fs.readlink(path.join(box.wafers, '.links', id))))).to.deep.equal([
        path.join('..', 'alone', 'data'),
      ])
      await ok(['stack', 'other'])
      expect(await fs.readFile(box.stack('other', 'big'), 'utf8')).to.have.length(100_000)
    })

    it('removes a child and its parent named together, and prints the result with --json', async function () {
      await box.wafer('base')
      await box.wafer('child', {parent: 'base'})
      expect(JSON.parse(await ok(['rm', 'base', 'child', '--yes', '--json']))).to.deep.equal({
        removed: ['child', 'base'],
      })
      expect(await fs.readdir(box.wafers)).to.deep.equal([])
    })
  })
})
