import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {Sandbox, busyboxBase, buildWeb, hasStackTrace, said, snapshot, useSandbox} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'
import {makeUmociImage} from '../helpers/umoci.js'

interface PruneJson {
  bytes: number
  dryRun: boolean
  items: Array<{kind: string; name: string; path?: string; size: number}>
  notes: string[]
}

describe('day two: prune, cp, mv, flatten and export (real trees, real mounts)', function () {
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  async function ok(args: string[], env: Record<string, string> = {}): Promise<string> {
    const run = await box.run(args, env)
    expect(run.exitCode, `wafers ${args.join(' ')}: ${run.stderr}`).to.equal(0)
    expect(hasStackTrace(run.stderr)).to.equal(false)
    return run.stdout
  }

  async function names(): Promise<string[]> {
    return (JSON.parse(await ok(['list', '--json'])) as Array<{name: string}>).map((wafer) => wafer.name)
  }

  async function pullImage(name: string): Promise<string> {
    const layout = path.join(box.root, 'layout')
    if (!(await fs.stat(layout).catch(() => undefined))) await makeUmociImage(layout, 'test')
    await ok(['pull', `oci:${layout}:test`, name])
    return layout
  }

  describe('prune', function () {
    it('removes the layers of an image no wafer uses and old build generations, with sizes; --dry-run changes nothing', async function () {
      await pullImage('image')
      const context = await busyboxBase(box)
      await fs.writeFile(path.join(context, 'f'), 'copied\n')
      const first = await buildWeb(box, context, 'FROM bb\nCOPY f /f\n')
      expect(first.run.exitCode, first.run.stderr).to.equal(0)
      const layers = (await names()).filter((name) => name.startsWith('layer-'))
      expect(layers).to.have.length(3)

      // Everything is used: the image's layers by image, the build step by web.
      expect(JSON.parse(await ok(['prune', '--dry-run', '--json'])).items).to.deep.equal([])
      await ok(['rm', '--yes', 'image'])
      const again = await buildWeb(box, context, 'FROM bb\nCOPY f /f\n', '--no-cache')
      expect(again.run.exitCode, again.run.stderr).to.equal(0)
      const oldStep = first.json.steps[1].wafer!
      const newStep = again.json.steps[1].wafer!
      expect(newStep).to.not.equal(oldStep)

      const before = await snapshot(box.wafers)
      const dry = JSON.parse(await ok(['prune', '--dry-run', '--json'])) as PruneJson
      expect(dry.dryRun).to.equal(true)
      expect(dry.items.map((item) => `${item.kind} ${item.name}`).sort()).to.deep.equal(
        [`build ${oldStep}`, ...layers.map((name) => `layer ${name}`)].sort(),
      )
      // The bottom layer holds busybox (about 1 MB or more): its size is counted.
      expect(Math.max(...dry.items.map((item) => item.size))).to.be.greaterThan(500_000)
      expect(dry.bytes).to.equal(dry.items.reduce((sum, item) => sum + item.size, 0))
      expect(await snapshot(box.wafers)).to.deep.equal(before)
      const table = await ok(['prune', '--dry-run'])
      expect(table).to.match(/^KIND +NAME +SIZE$/m)
      expect(table).to.match(/would remove 4 items, \d/)

      const done = JSON.parse(await ok(['prune', '--json'])) as PruneJson
      expect(done.dryRun).to.equal(false)
      expect(done.items.map((item) => item.name).sort()).to.deep.equal(dry.items.map((item) => item.name).sort())
      expect((await names()).sort()).to.deep.equal(['bb', newStep, 'web'].sort())
      // web still stacks, with what its step copied.
      await ok(['stack', 'web'])
      expect(await fs.readFile(box.stack('web', 'f'), 'utf8')).to.equal('copied\n')
      await ok(['unstack', 'web'])
      expect(await ok(['prune'])).to.equal('nothing to prune')
    })

    it('leaves alone layers that a stack, even one mounted by hand in another namespace, still uses', async function () {
      await pullImage('image')
      const layers = (await names()).filter((name) => name.startsWith('layer-'))
      await ok(['rm', '--yes', 'image'])
      // A read-only stack of the two upper layers, mounted by hand.
      const {execa} = await import('execa')
      const chain = JSON.parse(await ok(['list', '--json'])) as Array<{depth: number; name: string}>
      const [upper, middle] = chain.sort((a, b) => b.depth - a.depth).map((wafer) => wafer.name)
      await box.mountByHand(path.join(box.root, 'by-hand'), [upper, middle])
      const dry = JSON.parse(await ok(['prune', '--json'])) as PruneJson
      expect(dry.items).to.deep.equal([])
      expect((await names()).sort()).to.deep.equal([...layers].sort())
      await execa('umount', [path.join(box.root, 'by-hand')])

      // In another mount namespace, where this one's mount table does not show it.
      const other = execa('unshare', [
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        `mount -t overlay overlay -o lowerdir=${box.data(upper)}:${box.data(middle)} ${path.join(box.root, 'by-hand')} && echo up && cd ${path.join(box.root, 'by-hand')} && exec sleep 30`,
      ])
      await new Promise<void>((resolve, reject) => {
        other.stdout?.on('data', () => resolve())
        other.catch((error: Error) => reject(error))
      })
      try {
        const held = JSON.parse(await ok(['prune', '--json'])) as PruneJson
        expect(held.items).to.deep.equal([])
      } finally {
        other.kill('SIGKILL')
        await other.catch(() => {})
      }

      const freed = JSON.parse(await ok(['prune', '--json'])) as PruneJson
      expect(freed.items.map((item) => item.name).sort()).to.deep.equal([...layers].sort())
      expect(await names()).to.deep.equal([])
    })

    it('never breaks a pull that runs at the same time: the pull ends with every layer of its image', async function () {
      const layout = await pullImage('image')
      for (let round = 0; round < 4; round++) {
        await ok(['rm', '--yes', round === 0 ? 'image' : `again${round - 1}`])
        const pull = box.run(['pull', `oci:${layout}:test`, `again${round}`, '--json'])
        await new Promise((resolve) => {
          setTimeout(resolve, round * 150)
        })
        const pruned = box.run(['prune', '--json'])
        const [pulled, prunedRun] = await Promise.all([pull, pruned])
        expect(pulled.exitCode, pulled.stderr).to.equal(0)
        expect(prunedRun.exitCode, prunedRun.stderr).to.equal(0)
        const layers = (JSON.parse(pulled.stdout) as {layers: Array<{wafer: string}>}).layers.map(
          (layer) => layer.wafer,
        )
        const now = await names()
        expect(now).to.include.members([...layers, `again${round}`])
        await ok(['stack', `again${round}`])
        expect(await fs.readFile(box.stack(`again${round}`, 'etc/hostname'), 'utf8')).to.equal('umoci layer 2\n')
        await ok(['unstack', `again${round}`])
      }
    })

    it('leaves build steps alone while a build runs, and removes them once it is done', async function () {
      this.timeout(300_000)
      const context = await busyboxBase(box)
      await fs.writeFile(path.join(context, 'f'), 'copied\n')
      const first = await buildWeb(box, context, 'FROM bb\nCOPY f /f\n')
      expect(first.run.exitCode, first.run.stderr).to.equal(0)
      const again = await buildWeb(box, context, 'FROM bb\nCOPY f /f\n', '--no-cache')
      expect(again.run.exitCode, again.run.stderr).to.equal(0)
      const orphan = first.json.steps[1].wafer!
      // A build whose RUN step takes a while: its stage is held all along.
      const slow = buildWeb(box, context, 'FROM bb\nRUN sleep 4\n')
      for (let i = 0; i < 100; i++) {
        if ((await fs.readdir(box.wafers)).some((entry) => entry.startsWith('.create-build-'))) break
        await new Promise((resolve) => {
          setTimeout(resolve, 100)
        })
      }

      const during = JSON.parse(await ok(['prune', '--json'])) as PruneJson
      expect(during.notes).to.include('build step wafers were left alone: a build is running')
      expect(during.items).to.deep.equal([])
      expect(await names()).to.include(orphan)
      const built = await slow
      expect(built.run.exitCode, built.run.stderr).to.equal(0)
      const after = JSON.parse(await ok(['prune', '--json'])) as PruneJson
      expect(after.notes).to.deep.equal([])
      expect(after.items.map((item) => item.name).sort()).to.deep.equal([orphan, again.json.steps[1].wafer!].sort())
      expect((await names()).sort()).to.deep.equal(['bb', built.json.steps[1].wafer!, 'web'].sort())
    })

    it('leaves image layers alone while a pull holds its work directory, and says so', async function () {
      await pullImage('image')
      await ok(['rm', '--yes', 'image'])
      const work = path.join(box.wafers, '.oci', 'tmp', 'pull-held')
      await fs.mkdir(work, {recursive: true})
      const {execa} = await import('execa')
      // -o: flock itself holds the lock, so that killing it releases it.
      const holder = execa('flock', ['-o', work, 'sleep', '30'], {stdio: 'ignore'})
      await new Promise((resolve) => {
        setTimeout(resolve, 300)
      })
      try {
        const run = await box.run(['prune'])
        expect(run.exitCode, run.stderr).to.equal(0)
        expect(run.stdout).to.equal('nothing to prune')
        expect(run.stderr).to.include('image layer wafers were left alone: a pull is running')
      } finally {
        holder.kill('SIGKILL')
        await holder.catch(() => {})
      }

      expect(JSON.parse(await ok(['prune', '--json'])).items).to.have.length(3)
    })

    it('empties the push cache of wafers that are gone, and the caches plugins offer', async function () {
      await box.wafer('mine', {files: {'etc/mine': 'mine\n'}})
      await ok(['push', 'mine', `oci:${path.join(box.root, 'out')}:v1`])
      await box.wafer('kept', {files: {'etc/kept': 'kept\n'}})
      await ok(['push', 'kept', `oci:${path.join(box.root, 'out')}:v2`])
      const blobs = path.join(box.wafers, '.oci', 'blobs', 'sha256')
      expect(await fs.readdir(blobs)).to.have.length(2)
      await ok(['rm', '--yes', 'mine'])

      const fixture = fileURLToPath(new URL('../fixtures/plugin-alpha', import.meta.url))
      await ok(['plugins', 'link', '--no-install', fixture])
      const downloads = path.join(box.root, 'downloads')
      await fs.mkdir(downloads)
      await fs.writeFile(path.join(downloads, 'big.deb'), 'x'.repeat(50_000))
      const env = {WAFERS_TEST_PRUNE_DIR: downloads}

      const dry = JSON.parse(await ok(['prune', '--dry-run', '--json'], env)) as PruneJson
      expect(dry.items.map((item) => item.name).sort()).to.deep.equal(
        [
          'alpha download cache',
          'push cache entry of mine',
          dry.items.find((item) => item.name.startsWith('push cache blob'))!.name,
        ].sort(),
      )
      expect(dry.items.find((item) => item.name === 'alpha download cache')).to.include({path: downloads, size: 50_000})
      expect(await fs.readdir(downloads)).to.deep.equal(['big.deb'])

      await ok(['prune'], env)
      expect(await fs.stat(downloads).catch(() => undefined)).to.equal(undefined)
      expect(await fs.readdir(path.join(box.wafers, '.oci', 'layers'))).to.deep.equal(['kept.json'])
      expect(await fs.readdir(blobs)).to.have.length(1)
      // kept's cached layer is still used: pushing it again packs nothing new.
      const again = JSON.parse(await ok(['push', 'kept', `oci:${path.join(box.root, 'out')}:v3`, '--json'])) as {
        layers: Array<{made: boolean}>
      }
      expect(again.layers.map((layer) => layer.made)).to.deep.equal([false])
    })
  })

  /** The wafers of a pulled image, top (its layer 3) first. */
  async function imageLayers(name: string): Promise<string[]> {
    const wafers = JSON.parse(await ok(['list', '--json'])) as Array<{depth: number; layer?: string; name: string}>
    const layers = wafers.filter((wafer) => wafer.layer !== undefined).sort((a, b) => b.depth - a.depth)
    expect(layers, `the layers under ${name}`).to.have.length(3)
    return layers.map((wafer) => wafer.name)
  }

  describe('cp', function () {
    it('makes a sibling with a copy of the data: owners, modes, xattrs, overlay attributes, hard links, whiteouts', async function () {
      await pullImage('image')
      const [three, two] = await imageLayers('image')
      // image is stacked: its layers are read-only lower layers, which may be copied.
      await ok(['stack', 'image'])
      for (const [src, dst] of [
        [three, 'copy3'],
        [two, 'copy2'],
      ]) {
        const result = JSON.parse(await ok(['cp', src, dst, '--json']))
        const parent = (await fs.readFile(path.join(box.wafers, src, 'parent'), 'utf8')).trim()
        expect(result).to.deep.equal({name: dst, parent, source: src})
        expect((await fs.readFile(path.join(box.wafers, dst, 'parent'), 'utf8')).trim()).to.equal(parent)
        const [original, copy] = await Promise.all(
          [src, dst].map((name) => treeListing(box.data(name), {overlayXattrs: true})),
        )
        expect(copy).to.deep.equal(original)
        const [dirA, dirB] = await Promise.all([src, dst].map((name) => fs.stat(box.data(name))))
        expect([dirB.mode, dirB.uid, dirB.gid]).to.deep.equal([dirA.mode, dirA.uid, dirA.gid])
      }

      // What the layers carry really is there: layer 2 has whiteouts (0:0 devices), layer 3 an opaque directory.
      const whiteouts = (await treeListing(box.data('copy2')))
        .filter((line) => /^\S+ c \S+ \d+:\d+ 0:0\b/.test(line))
        .map((line) => line.split(' ')[0])
      expect(whiteouts).to.include.members(['gone-too', 'gone/file1'])
      expect((await treeListing(box.data('copy3'), {overlayXattrs: true})).join('\n')).to.include(
        'trusted.overlay.opaque',
      )

      // A copy of the image's top keeps its config, and stacks the same.
      await ok(['unstack', 'image'])
      await ok(['cp', 'image', 'image2'])
      const meta = JSON.parse(await fs.readFile(path.join(box.wafers, 'image2', 'meta.json'), 'utf8'))
      expect(meta.image.ref).to.include('oci:')
      await ok(['stack', 'image2'])
      expect(await fs.readFile(box.stack('image2', 'etc/hostname'), 'utf8')).to.equal('umoci layer 2\n')
    })

    it('refuses a DST that exists and an SRC that is stacked, changing nothing', async function () {
      await box.wafer('base', {files: {'etc/os': 'base\n'}})
      await box.wafer('top', {files: {'etc/top': 'top\n'}, parent: 'base'})
      await box.wafer('other', {parent: 'base'})
      await ok(['stack', 'top'])
      const before = await snapshot(box.wafers)
      const exists = await box.run(['cp', 'base', 'other'])
      expect(exists.exitCode).to.equal(1)
      expect(said(exists.stderr)).to.include('wafer other already exists')
      const stacked = await box.run(['cp', 'top', 'top-copy'])
      expect(stacked.exitCode).to.equal(1)
      expect(said(stacked.stderr)).to.include(`wafer top is stacked at ${box.stack('top')}`)
      expect(said(stacked.stderr)).to.include('unstack it first')
      const missing = await box.run(['cp', 'nope', 'x'])
      expect(said(missing.stderr)).to.include('wafer nope not found')
      for (const run of [exists, stacked, missing]) expect(hasStackTrace(run.stderr)).to.equal(false)
      expect(await snapshot(box.wafers)).to.deep.equal(before)
    })
  })

  describe('mv', function () {
    /** base <- mid <- {top, side}, base holding a file the others show. */
    async function chain(): Promise<void> {
      await box.wafer('base', {files: {'etc/os': 'base\n'}})
      await box.wafer('mid', {files: {'etc/mid': 'mid\n'}, parent: 'base'})
      await box.wafer('top', {parent: 'mid'})
      await box.wafer('side', {parent: 'mid'})
    }

    const parentOf = async (name: string) => fs.readFile(path.join(box.wafers, name, 'parent'), 'utf8')

    it('renames a wafer and re-points every child at the new name', async function () {
      await chain()
      await ok(['stack', 'top'])
      await ok(['unstack', 'top'])
      const result = JSON.parse(await ok(['mv', 'mid', 'middle', '--json']))
      expect(result).to.deep.equal({children: ['side', 'top'], from: 'mid', to: 'middle'})
      expect(await parentOf('top')).to.equal('middle\n')
      expect(await parentOf('side')).to.equal('middle\n')
      expect(await parentOf('middle')).to.equal('base')
      expect(await fs.readFile(box.data('middle', 'etc/mid'), 'utf8')).to.equal('mid\n')
      expect(await names()).to.deep.equal(['base', 'middle', 'side', 'top'])
      // No short link is left pointing at the old name.
      for (const link of await fs.readdir(path.join(box.wafers, '.links'))) {
        expect(await fs.readlink(path.join(box.wafers, '.links', link))).to.not.equal('../mid/data')
      }

      await ok(['stack', 'top'])
      expect(await fs.readFile(box.stack('top', 'etc/os'), 'utf8')).to.equal('base\n')
      expect(await fs.readFile(box.stack('top', 'etc/mid'), 'utf8')).to.equal('mid\n')
      const refused = await box.run(['mv', 'base', 'b2'])
      expect(refused.exitCode).to.equal(1)
      expect(said(refused.stderr)).to.include(`wafer base is a lower layer of the stack at ${box.stack('top')}`)
    })

    it('refuses while anything below or above it is stacked, and a NEW that exists, changing nothing', async function () {
      await chain()
      await ok(['stack', 'side'])
      const before = await snapshot(box.wafers)
      for (const [name, expected] of [
        ['base', `wafer base is a lower layer of the stack at ${box.stack('side')}`],
        ['mid', `wafer mid is a lower layer of the stack at ${box.stack('side')}`],
        ['side', `wafer side is stacked at ${box.stack('side')}`],
      ]) {
        const run = await box.run(['mv', name, `${name}-new`])
        expect(run.exitCode, name).to.equal(1)
        expect(said(run.stderr)).to.include(expected)
        expect(said(run.stderr)).to.include('nothing was changed')
        expect(hasStackTrace(run.stderr)).to.equal(false)
      }

      // top is not stacked, but the wafers below it are lower layers of side's stack.
      const above = await box.run(['mv', 'top', 'top-new'])
      expect(above.exitCode).to.equal(1)
      expect(said(above.stderr)).to.include(`is a lower layer of the stack at ${box.stack('side')}`)
      const taken = await box.run(['mv', 'top', 'side'])
      expect(said(taken.stderr)).to.include('wafer side already exists')
      expect(await snapshot(box.wafers)).to.deep.equal(before)

      // A wafer enable stacks at boot keeps its name until it is disabled.
      await ok(['unstack', 'side'])
      const env = {WAFERS_NSPAWN_DIR: path.join(box.root, 'nspawn'), WAFERS_UNIT_DIR: path.join(box.root, 'units')}
      await ok(['enable', 'side'], env)
      const enabled = await box.run(['mv', 'side', 'side-new'], env)
      expect(enabled.exitCode).to.equal(1)
      expect(said(enabled.stderr)).to.include(
        `wafer side is stacked at boot by ${path.join(box.root, 'units', 'wafers-stack-side.service')}`,
      )
      expect(await names()).to.include('side')
      await ok(['disable', 'side'], env)
      await ok(['mv', 'side', 'side-new'], env)
    })

    it('finishes a rename a crash cut short when run again', async function () {
      await chain()
      // What a crash right after the first step leaves: the directory renamed, the children not.
      await fs.rename(path.join(box.wafers, 'mid'), path.join(box.wafers, 'middle'))
      const broken = JSON.parse(await ok(['list', '--json'])) as Array<{name: string; problem?: string}>
      expect(broken.find((wafer) => wafer.name === 'top')?.problem).to.include('its parent mid does not exist')
      expect(await ok(['mv', 'mid', 'middle'])).to.equal('renamed mid to middle (2 children re-pointed)')
      expect(await parentOf('top')).to.equal('middle\n')
      await ok(['stack', 'top'])
      expect(await fs.readFile(box.stack('top', 'etc/os'), 'utf8')).to.equal('base\n')
    })
  })

  describe('flatten', function () {
    it("makes a base wafer of a stack's merged view: no whiteouts, no overlay attributes, capabilities and hard links kept", async function () {
      await pullImage('image')
      await box.wafer('mine', {files: {'etc/mine': 'mine\n'}, parent: 'image'})
      const result = JSON.parse(await ok(['flatten', 'mine', 'flat', '--json']))
      expect(result.name).to.equal('flat')
      expect(result.wafers).to.have.length(5)
      expect(await fs.stat(path.join(box.wafers, 'flat', 'parent')).catch(() => undefined)).to.equal(undefined)
      const flat = await treeListing(box.data('flat'), {overlayXattrs: true})

      // The same as what the stack shows a container (mounted the usual way, by wafers stack).
      await ok(['stack', 'mine'])
      expect(flat).to.deep.equal(await treeListing(box.stack('mine')))
      await ok(['unstack', 'mine'])
      expect(flat.join('\n')).to.not.include('trusted.overlay')
      expect(flat.filter((line) => /^\S+ c \S+ \d+:\d+ 0:0\b/.test(line))).to.deep.equal([])
      for (const gone of ['gone/file1', 'gone-too', 'gone-dir', 'opaque/old1']) {
        expect(await fs.lstat(box.data('flat', gone)).catch(() => undefined), gone).to.equal(undefined)
      }

      // Read back with other tools: getfattr sees the file capability, stat the hard links and owner.
      const {execa} = await import('execa')
      const attrs = await execa('getfattr', ['-d', '-m', '-', '--absolute-names', box.data('flat', 'data/xattr-file')])
      expect(attrs.stdout).to.include('security.capability=')
      const [a, b] = await Promise.all(['data/hl-a', 'data/hl-b'].map((file) => fs.stat(box.data('flat', file))))
      expect(a.ino).to.equal(b.ino)
      expect((await fs.stat(box.data('flat', 'data/owned'))).uid).to.equal(1234)
      expect(await fs.readFile(box.data('flat', 'etc/mine'), 'utf8')).to.equal('mine\n')

      // It stacks alone, and keeps the image config.
      expect(JSON.parse(await fs.readFile(path.join(box.wafers, 'flat', 'meta.json'), 'utf8')).image.ref).to.include(
        'oci:',
      )
      await ok(['stack', 'flat'])
      expect(await fs.readFile(box.stack('flat', 'etc/hostname'), 'utf8')).to.equal('umoci layer 2\n')
    })

    it('flattens a base wafer alone, and refuses a stack with a writable top and a NEW that exists', async function () {
      await box.wafer('base', {files: {'etc/os': 'base\n'}})
      await box.wafer('top', {files: {'etc/top': 'top\n'}, parent: 'base'})
      await ok(['flatten', 'base', 'base-flat'])
      expect(await treeListing(box.data('base-flat'))).to.deep.equal(await treeListing(box.data('base')))
      await ok(['stack', 'top'])
      const before = await snapshot(box.wafers)
      const stacked = await box.run(['flatten', 'top', 'top-flat'])
      expect(stacked.exitCode).to.equal(1)
      expect(said(stacked.stderr)).to.include(`wafer top is stacked at ${box.stack('top')}`)
      expect(said(stacked.stderr)).to.include('unstack it first')
      const taken = await box.run(['flatten', 'base', 'top'])
      expect(said(taken.stderr)).to.include('wafer top already exists')
      for (const run of [stacked, taken]) expect(hasStackTrace(run.stderr)).to.equal(false)
      expect(await snapshot(box.wafers)).to.deep.equal(before)
      // Nothing of the private mount is left in the store.
      expect((await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.create-'))).to.deep.equal([])
    })
  })

  describe('export', function () {
    it('writes the merged view as a root file system tarball GNU tar and podman import read back file for file', async function () {
      this.timeout(300_000)
      await pullImage('image')
      await box.wafer('mine', {files: {'etc/mine': 'mine\n'}, parent: 'image'})
      await ok(['stack', 'mine'])
      const view = await treeListing(box.stack('mine'))
      await ok(['unstack', 'mine'])
      const {execa} = await import('execa')
      for (const file of ['mine.tar', 'mine.tar.gz', 'mine.tar.zst']) {
        const tarball = path.join(box.root, file)
        const result = JSON.parse(await ok(['export', 'mine', tarball, '--json']))
        const size = (await fs.stat(tarball)).size
        expect(result).to.deep.include({bytes: size, file: tarball, name: 'mine'})
        expect(result.wafers).to.have.length(5)
        const into = path.join(box.root, `x-${file}`)
        await fs.mkdir(into)
        await execa('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', tarball, '-C', into])
        expect(await treeListing(into, {overlayXattrs: true}), file).to.deep.equal(view)
        const listing = (await execa('tar', ['-tvf', tarball])).stdout
        expect(listing).to.not.match(/^c.* 0,0 /m)
        expect(listing).to.include('./etc/mine')
      }

      // The same tarball on stdout, byte for byte.
      const streamed = await execa(
        process.execPath,
        [fileURLToPath(new URL('../../bin/run.js', import.meta.url)), 'export', 'mine', '-'],
        {
          encoding: 'buffer',
          env: box.env,
          stdin: 'ignore',
        },
      )
      expect(Buffer.compare(Buffer.from(streamed.stdout), await fs.readFile(path.join(box.root, 'mine.tar')))).to.equal(
        0,
      )

      // podman takes it as an image, and shows the same files.
      const podman = [
        '--root',
        path.join(box.root, 'podman'),
        '--runroot',
        path.join(box.root, 'podman-run'),
        '--storage-driver',
        'vfs',
      ]
      await execa('podman', [...podman, 'import', path.join(box.root, 'mine.tar.zst'), 'localhost/wafers-export:1'])
      const mounted = (await execa('podman', [...podman, 'image', 'mount', 'localhost/wafers-export:1'])).stdout.trim()
      try {
        expect(await treeListing(mounted)).to.deep.equal(view)
      } finally {
        await execa('podman', [...podman, 'image', 'unmount', 'localhost/wafers-export:1'], {reject: false})
      }

      // Nothing of the private mount is left in the store, and no temporary file beside the tarballs.
      expect((await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.create-'))).to.deep.equal([])
      expect((await fs.readdir(box.root)).filter((entry) => entry.endsWith('.tmp'))).to.deep.equal([])
    })

    it('refuses a writable stack, an existing FILE without --force and an unknown ending, leaving nothing', async function () {
      await box.wafer('base', {files: {'etc/os': 'base\n'}})
      await box.wafer('top', {files: {'etc/top': 'top\n'}, parent: 'base'})
      const tarball = path.join(box.root, 'top.tar')
      await fs.writeFile(tarball, 'keep me')
      const exists = await box.run(['export', 'top', tarball])
      expect(exists.exitCode).to.equal(1)
      expect(said(exists.stderr)).to.include(`${tarball} already exists; nothing was exported`)
      expect(await fs.readFile(tarball, 'utf8')).to.equal('keep me')
      const ending = await box.run(['export', 'top', path.join(box.root, 'top.zip')])
      const missing = await box.run(['export', 'nope', path.join(box.root, 'nope.tar')], {
        WAFERS: path.join(box.root, 'no-store'),
      })
      expect(said(missing.stderr)).to.include('wafer nope not found')
      expect(said(ending.stderr)).to.include('does not end in .tar')
      await ok(['stack', 'top'])
      const stacked = await box.run(['export', 'top', path.join(box.root, 'other.tar')])
      expect(stacked.exitCode).to.equal(1)
      expect(said(stacked.stderr)).to.include(`wafer top is stacked at ${box.stack('top')}`)
      for (const run of [exists, ending, missing, stacked]) expect(hasStackTrace(run.stderr)).to.equal(false)
      // usr/ is the sandbox's own: where it puts wafers on PATH, as npm link would.
      expect((await fs.readdir(box.root)).sort()).to.deep.equal(['stacks', 'top.tar', 'usr', 'wafers'])
      expect((await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.'))).to.deep.equal(['.links'])
      await ok(['unstack', 'top'])
      await ok(['export', 'top', tarball, '--force'])
      const {execa} = await import('execa')
      expect((await execa('tar', ['-tf', tarball])).stdout.split('\n')).to.include.members(['./etc/os', './etc/top'])
    })
  })
})
