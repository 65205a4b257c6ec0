import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {Registry, useRegistry} from '../helpers/registry.js'
import {Sandbox, snapshot, useSandbox} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'

interface Layer {
  digest: string
  made: boolean
  notShared?: string
  sharedFrom?: string
  wafer: string
}

interface Pulled {
  layers: Layer[]
  name: string
}

function json<T>(stdout: string): T {
  return JSON.parse(stdout) as T
}

/**
 * A busybox base (which has a machine id) with files of every kind: owners, setuid, a sticky
 * directory, hard links, a symlink, a device, a FIFO, user/trusted/security.capability
 * attributes, times with nanoseconds and the root directory's own mode and attribute.
 */
async function makeBase(box: Sandbox): Promise<void> {
  expect((await box.run(['create', 'base', '--seed', 'busybox'])).exitCode).to.equal(0)
  const data = box.data('base')
  await fs.mkdir(path.join(data, 'srv', 'shared'), {recursive: true})
  await fs.chmod(path.join(data, 'srv', 'shared'), 0o1777)
  await fs.writeFile(path.join(data, 'srv', 'owned'), 'owned by 1234:5678\n')
  await fs.chown(path.join(data, 'srv', 'owned'), 1234, 5678)
  await fs.writeFile(path.join(data, 'srv', 'tool'), '#!/bin/sh\necho tool\n')
  await fs.chmod(path.join(data, 'srv', 'tool'), 0o4755)
  await fs.link(path.join(data, 'srv', 'tool'), path.join(data, 'srv', 'tool-again'))
  await fs.symlink('owned', path.join(data, 'srv', 'link'))
  await execa('mknod', ['-m', '0640', path.join(data, 'srv', 'zero5'), 'c', '1', '5'])
  await execa('mkfifo', ['-m', '0600', path.join(data, 'srv', 'fifo')])
  await fs.writeFile(path.join(data, 'srv', 'attrs'), 'with attributes\n')
  await execa('setfattr', ['-n', 'user.color', '-v', 'blue', path.join(data, 'srv', 'attrs')])
  await execa('setfattr', ['-n', 'trusted.wafers', '-v', 'kept', path.join(data, 'srv', 'attrs')])
  await execa('setcap', ['cap_net_raw+ep', path.join(data, 'srv', 'attrs')])
  await execa('touch', ['-h', '-d', '2021-02-03 04:05:06.123456789', path.join(data, 'srv', 'link')])
  await execa('touch', ['-d', '2021-02-03 04:05:06.987654321', path.join(data, 'srv', 'owned')])
  await execa('setfattr', ['-n', 'user.root', '-v', 'the root', data])
  await fs.chmod(data, 0o750)
}

/** treeListing of `dir`, and first a line for `dir` itself: its mode, owner, user.* attributes and mtime. */
async function listing(dir: string, ignore: string[] = []): Promise<string[]> {
  const stat = await fs.stat(dir)
  const attrs = (await execa('getfattr', ['--absolute-names', '-d', '-m', '^user\\.', dir])).stdout
    .split('\n')
    .filter((line) => line.startsWith('user.'))
  const root = `. ${(stat.mode & 0o7777).toString(8)} ${stat.uid}:${stat.gid} ${attrs.join(' ')} mtime=${Math.floor(stat.mtimeMs / 1000)}`
  return [root, ...(await treeListing(dir, {ignore}))]
}

/**
 * A listing without what the empty top a pull makes has of its own: its root directory, and the
 * etc it makes for its fresh machine id.
 */
function noTop(lines: string[]): string[] {
  return lines.filter(
    (line) => !line.startsWith('. ') && !line.startsWith('etc ') && !line.startsWith('etc/machine-id '),
  )
}

/** Inode numbers of every entry under `dir`, by path. */
async function inodes(dir: string): Promise<Map<string, number>> {
  const found = new Map<string, number>()
  for (const entry of await fs.readdir(dir, {recursive: true})) {
    found.set(entry, (await fs.lstat(path.join(dir, entry))).ino)
  }

  return found
}

/** Bytes the store takes on disk (hard-linked files once). */
async function diskUsage(dir: string): Promise<number> {
  return Number((await execa('du', ['-s', '-B1', dir])).stdout.split('\t')[0])
}

/** What the stack of `name` shows, as treeListing has it; unstacked again after. */
async function stackView(box: Sandbox, name: string, ignore: string[] = []): Promise<string[]> {
  const stacked = await box.run(['stack', name])
  expect(stacked.exitCode, stacked.stderr).to.equal(0)
  try {
    return await listing(box.stack(name), ignore)
  } finally {
    expect((await box.run(['unstack', name])).exitCode).to.equal(0)
  }
}

describe('oci: a layer pulled back into the store it was pushed from is stored once', function () {
  this.timeout(300_000)
  let registry: Registry
  let box: Sandbox

  useRegistry((started) => {
    registry = started
  })

  useSandbox((created) => {
    box = created
  })

  async function push(wafer: string, repo: string): Promise<{digest: string; layers: Layer[]}> {
    const pushed = await box.run(['push', wafer, `${registry.host}/${repo}`, '--tls-verify=false', '--json'])
    expect(pushed.exitCode, pushed.stderr).to.equal(0)
    return json(pushed.stdout)
  }

  async function pull(repo: string, name: string, ...flags: string[]): Promise<Pulled> {
    const pulled = await box.run(['pull', `${registry.host}/${repo}`, name, '--tls-verify=false', '--json', ...flags])
    expect(pulled.exitCode, pulled.stderr).to.equal(0)
    return json(pulled.stdout)
  }

  /** umoci's unpack of what the registry holds as `repo`: its rootfs. */
  async function umociRootfs(repo: string): Promise<string> {
    const layout = path.join(box.root, `layout-${repo.replaceAll(/\W/g, '-')}`)
    await execa('skopeo', ['copy', '--src-tls-verify=false', `docker://${registry.host}/${repo}`, `oci:${layout}:x`])
    const bundle = `${layout}-bundle`
    await execa('umoci', ['unpack', '--image', `${layout}:x`, bundle])
    return path.join(bundle, 'rootfs')
  }

  it('takes the base wafer’s own files as the layer wafer: same inodes, same views, and the image never follows later changes', async function () {
    await makeBase(box)
    await push('base', 'dedupe/base:1')
    const before = await stackView(box, 'base')
    const ids = await inodes(box.data('base'))
    const usage = await diskUsage(box.wafers)
    const baseSize = await diskUsage(box.data('base'))

    const pulled = await pull('dedupe/base:1', 'img')
    const [layer] = pulled.layers
    expect(layer.made).to.equal(true)
    expect(layer.sharedFrom).to.equal('base')
    // The very files base had: nothing was copied.
    expect(await inodes(box.data(layer.wafer))).to.deep.equal(ids)
    expect(await diskUsage(box.wafers)).to.be.below(usage + baseSize / 10)
    expect((await fs.readFile(path.join(box.wafers, 'base', 'parent'), 'utf8')).trim()).to.equal(layer.wafer)
    expect(await fs.readdir(box.wafers)).to.not.include('.split-base')

    // base shows what it showed (its machine id too); the layer holds what umoci unpacks of the
    // image, its machine id empty, as a pull of the image into another store would.
    expect(await stackView(box, 'base')).to.deep.equal(before)
    const rootfs = await umociRootfs('dedupe/base:1')
    expect(await listing(box.data(layer.wafer))).to.deep.equal(await listing(rootfs))
    expect(await fs.readFile(box.data(layer.wafer, 'etc', 'machine-id'), 'utf8')).to.equal('')
    // What no layer carries stays as base had it: its times' nanoseconds (the tar, and so umoci's
    // unpack, has the microsecond; a push of the layer wafer rounds them the same, below).
    const ns = async (file: string) => (await fs.lstat(file, {bigint: true})).mtimeNs % 1_000_000_000n
    expect(await ns(box.data(layer.wafer, 'srv', 'owned'))).to.equal(987_654_321n)
    expect(await ns(path.join(rootfs, 'srv', 'owned'))).to.equal(987_654_000n)
    const image = noTop(await stackView(box, 'img'))
    expect(image).to.deep.equal(noTop(await listing(rootfs)))

    // Changing base, by hand and through its stack, changes base only.
    const layerBefore = await treeListing(box.data(layer.wafer))
    expect((await box.run(['stack', 'base'])).exitCode).to.equal(0)
    await fs.writeFile(box.stack('base', 'srv', 'owned'), 'changed in base\n')
    await fs.rm(box.stack('base', 'srv', 'tool'))
    await fs.writeFile(box.stack('base', 'srv', 'new'), 'new in base\n')
    expect((await box.run(['unstack', 'base'])).exitCode).to.equal(0)
    expect(await treeListing(box.data(layer.wafer))).to.deep.equal(layerBefore)
    expect(noTop(await stackView(box, 'img'))).to.deep.equal(image)
    const changed = await stackView(box, 'base')
    expect(changed.some((line) => line.startsWith('srv/new '))).to.equal(true)
    expect(changed.some((line) => line.startsWith('srv/tool '))).to.equal(false)

    // Pushed again, base's layers are the image's layer and one of its changes; pulled back, the
    // change is split off in turn, on the first layer wafer.
    const again = await push('base', 'dedupe/base:2')
    expect(again.layers.map((l) => l.wafer)).to.deep.equal([layer.wafer, 'base'])
    expect(again.layers[0].digest).to.equal(layer.digest)
    expect(again.layers[0].made).to.equal(false)
    const changedView = await stackView(box, 'base')
    const second = await pull('dedupe/base:2', 'img2')
    expect(second.layers.map((l) => [l.made, l.sharedFrom])).to.deep.equal([
      [false, undefined],
      [true, 'base'],
    ])
    expect(await stackView(box, 'base')).to.deep.equal(changedView)
    expect((await fs.readFile(path.join(box.wafers, second.layers[1].wafer, 'parent'), 'utf8')).trim()).to.equal(
      layer.wafer,
    )
    const rootfs2 = await umociRootfs('dedupe/base:2')
    expect(noTop(await stackView(box, 'img2'))).to.deep.equal(noTop(await listing(rootfs2)))
  })

  it('downloads no layer it takes from a wafer here: the pull works with the blob gone from the registry', async function () {
    await makeBase(box)
    const pushed = await push('base', 'dedupe/base:1')
    const [digest] = pushed.layers.map((l) => l.digest)
    // The registry loses the layer's bytes (manifest and config stay): a download of it would fail.
    const hex = digest.slice('sha256:'.length)
    const blob = path.join(
      registry.dir,
      'storage',
      'docker',
      'registry',
      'v2',
      'blobs',
      'sha256',
      hex.slice(0, 2),
      hex,
      'data',
    )
    await fs.rm(blob)
    const lost = await execa(
      'skopeo',
      [
        'copy',
        '--src-tls-verify=false',
        `docker://${registry.host}/dedupe/base:1`,
        `oci:${path.join(box.root, 'lost')}:x`,
      ],
      {reject: false},
    )
    expect(lost.exitCode, 'skopeo cannot copy the image any more').to.not.equal(0)

    const run = await box.run(['pull', `${registry.host}/dedupe/base:1`, 'img', '--tls-verify=false'])
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(run.stderr).to.include('1 layer may be taken from wafers here')
    const listed = await box.run(['list', '--no-size'])
    expect(listed.stdout).to.match(/^img\b/m)
    expect((await fs.readFile(path.join(box.wafers, 'base', 'parent'), 'utf8')).trim()).to.equal(
      (await fs.readFile(path.join(box.wafers, 'img', 'parent'), 'utf8')).trim(),
    )
  })

  /** base <- e1 <- b <- e2, e1 and e2 holding the same file with the same times: e2's image is [base, X, B, X]. */
  async function makeTwice(): Promise<void> {
    await makeBase(box)
    for (const [wafer, parent] of [
      ['e1', 'base'],
      ['b', 'e1'],
      ['e2', 'b'],
    ]) {
      expect((await box.run(['create', wafer, parent])).exitCode).to.equal(0)
      if (wafer === 'b') await fs.writeFile(box.data(wafer, 'file-b'), 'b\n')
    }

    for (const wafer of ['e1', 'e2']) {
      await fs.writeFile(box.data(wafer, 'same'), 'same\n')
      await fs.chmod(box.data(wafer), 0o755)
      await execa('find', [box.data(wafer), '-exec', 'touch', '-h', '-d', '2020-01-01 00:00:00', '{}', '+'])
    }

    const pushed = await push('e2', 'dedupe/twice:1')
    expect(pushed.layers[1].digest).to.equal(pushed.layers[3].digest)
  }

  it('pulls an image that has one layer blob twice, when dedupe takes the first layer and not the others', async function () {
    // base is split; e1 is not (it sits on base, not on the layer wafer), so X is downloaded for
    // layers 2 and 4.
    await makeTwice()
    const pulled = await pull('dedupe/twice:1', 'img')
    expect(pulled.layers.map((l) => l.sharedFrom)).to.deep.equal(['base', undefined, undefined, undefined])
    expect(noTop(await stackView(box, 'img'))).to.deep.equal(noTop(await listing(await umociRootfs('dedupe/twice:1'))))
  })

  it('downloads a blob that is here for one layer and still to come for a later one', async function () {
    // [base, X] pulled first: X is then here for layer 2 and to download for layer 4.
    await makeTwice()
    await push('e1', 'dedupe/twice:0')
    const first = await pull('dedupe/twice:0', 'img0', '--no-dedupe')
    expect(first.layers.map((l) => l.made)).to.deep.equal([true, true])
    const second = await pull('dedupe/twice:1', 'img1', '--no-dedupe')
    expect(second.layers.map((l) => l.made)).to.deep.equal([false, false, true, true])
    expect(noTop(await stackView(box, 'img1'))).to.deep.equal(noTop(await listing(await umociRootfs('dedupe/twice:1'))))
  })

  it('unpacks a copy, saying why, when the base or a wafer on it is stacked, when it changed since the push, and with --no-dedupe', async function () {
    await makeBase(box)
    await push('base', 'dedupe/base:1')
    const ids = await inodes(box.data('base'))
    const rootfs = await umociRootfs('dedupe/base:1')
    const check = async (pulled: Pulled, why: RegExp | undefined) => {
      const [layer] = pulled.layers
      expect(layer.made).to.equal(true)
      expect(layer.sharedFrom).to.equal(undefined)
      if (why) expect(layer.notShared).to.match(why)
      else expect(layer.notShared).to.equal(undefined)
      expect(await fs.lstat(path.join(box.wafers, 'base', 'parent')).catch(() => undefined)).to.equal(undefined)
      expect(await inodes(box.data('base'))).to.deep.equal(ids)
      expect((await fs.lstat(box.data(layer.wafer, 'srv', 'owned'))).ino).to.not.equal(ids.get('srv/owned'))
      expect(await listing(box.data(layer.wafer))).to.deep.equal(await listing(rootfs))
      expect((await box.run(['rm', pulled.name, layer.wafer, '--yes'])).exitCode).to.equal(0)
    }

    expect((await box.run(['stack', 'base'])).exitCode).to.equal(0)
    await check(await pull('dedupe/base:1', 'img'), /^base is stacked at /)
    expect(await box.mountOf('base')).to.not.equal(undefined)
    expect((await box.run(['unstack', 'base'])).exitCode).to.equal(0)

    expect((await box.run(['create', 'child', 'base'])).exitCode).to.equal(0)
    expect((await box.run(['stack', 'child'])).exitCode).to.equal(0)
    await check(await pull('dedupe/base:1', 'img'), /^base is a lower layer of the stack at .*child/)
    expect((await box.run(['unstack', 'child'])).exitCode).to.equal(0)

    await check(await pull('dedupe/base:1', 'img', '--no-dedupe'), undefined)

    await fs.writeFile(box.data('base', 'srv', 'owned'), 'changed after the push\n')
    ids.set('srv/owned', (await fs.lstat(box.data('base', 'srv', 'owned'))).ino)
    await check(await pull('dedupe/base:1', 'img'), /^base has changed since it was pushed$/)
  })

  it('leaves a second image that shares the layer as it was: found by its ChainID, not split again', async function () {
    await makeBase(box)
    await box.wafer('app', {files: {'srv/app': 'app\n'}, parent: 'base'})
    await push('app', 'dedupe/app:1')
    await push('base', 'dedupe/base:1')
    const first = await pull('dedupe/base:1', 'img')
    expect(first.layers[0].sharedFrom).to.equal('base')
    // app sits on base, not on the layer wafer: its layer is unpacked, the base layer shared.
    const second = await pull('dedupe/app:1', 'appimg')
    expect(second.layers.map((l) => [l.wafer, l.made, l.sharedFrom])).to.deep.equal([
      [first.layers[0].wafer, false, undefined],
      [second.layers[1].wafer, true, undefined],
    ])
    expect((await box.run(['rm', 'img', 'appimg', second.layers[1].wafer, '--yes'])).exitCode).to.equal(0)
    const rootfs = await umociRootfs('dedupe/app:1')
    const pulledAgain = await pull('dedupe/app:1', 'appimg')
    expect(pulledAgain.layers[0].made).to.equal(false)
    expect(noTop(await stackView(box, 'appimg'))).to.deep.equal(noTop(await listing(rootfs)))
  })

  it('finishes a split killed after the files moved, and undoes one killed before, at the next pull', async function () {
    await makeBase(box)
    await push('base', 'dedupe/base:1')
    const view = await stackView(box, 'base')
    const layer = (await pull('dedupe/base:1', 'img')).layers[0].wafer
    expect((await box.run(['rm', 'img', '--yes'])).exitCode).to.equal(0)

    // Killed after the files moved into the journal (and before the layer wafer was renamed out):
    // base has no data, the layer wafer is not there.
    const journal = path.join(box.wafers, '.split-base')
    await fs.mkdir(journal)
    await fs.rename(path.join(box.wafers, layer), path.join(journal, 'wafer'))
    await fs.rename(box.data('base'), path.join(journal, 'fresh'))
    const plan = {below: layer, emptied: [], wafer: 'base'}
    await fs.writeFile(path.join(journal, 'plan.json'), JSON.stringify(plan))
    expect((await box.run(['stack', 'base'])).exitCode).to.not.equal(0)
    const pulled = await pull('dedupe/base:1', 'img')
    expect(pulled.layers[0].made).to.equal(false)
    expect(await fs.readdir(box.wafers)).to.not.include('.split-base')
    expect(await stackView(box, 'base')).to.deep.equal(view)

    // Killed after base was pointed at the layer wafer, before its files moved: undone, and then
    // the pull splits it anew.
    const other = await box.run(['create', 'other', '--seed', 'busybox'])
    expect(other.exitCode).to.equal(0)
    await push('other', 'dedupe/other:1')
    const otherView = await stackView(box, 'other')
    const otherLayer = json<Pulled>(
      (
        await box.run([
          'pull',
          `${registry.host}/dedupe/other:1`,
          'scratch',
          '--tls-verify=false',
          '--json',
          '--no-dedupe',
        ])
      ).stdout,
    ).layers[0].wafer
    expect((await box.run(['rm', 'scratch', otherLayer, '--yes'])).exitCode).to.equal(0)
    const otherJournal = path.join(box.wafers, '.split-other')
    await fs.mkdir(path.join(otherJournal, 'wafer'), {recursive: true})
    await fs.mkdir(path.join(otherJournal, 'fresh'))
    await fs.writeFile(
      path.join(otherJournal, 'plan.json'),
      JSON.stringify({below: otherLayer, emptied: [], wafer: 'other'}),
    )
    await fs.writeFile(path.join(box.wafers, 'other', 'parent'), `${otherLayer}\n`)
    const again = await pull('dedupe/other:1', 'otherimg')
    expect(again.layers[0].sharedFrom).to.equal('other')
    expect(await fs.readdir(box.wafers)).to.not.include('.split-other')
    expect(await stackView(box, 'other')).to.deep.equal(otherView)
  })

  describe('what a review found (a hostile store, other commands meanwhile)', function () {
    /** A wafer made by hand with a few files, pushed as dedupe/REPO:1. */
    async function pushed(repo: string, wafer = 'base'): Promise<void> {
      await box.wafer(wafer, {files: {'etc/os-release': 'ID=test\n', 'srv/big': 'big file\n', 'srv/owned': 'owned\n'}})
      await push(wafer, `dedupe/${repo}:1`)
    }

    /** Pulls dedupe/REPO:1 as `name`, checks that its one layer was unpacked, not taken from base, and removes both: why not. */
    async function unpacked(repo: string, name: string): Promise<string> {
      const ids = await inodes(box.data('base'))
      const pulled = await pull(`dedupe/${repo}:1`, name)
      const [layer] = pulled.layers
      expect(layer.made).to.equal(true)
      expect(layer.sharedFrom).to.equal(undefined)
      expect(await inodes(box.data('base'))).to.deep.equal(ids)
      expect(await fs.lstat(path.join(box.wafers, 'base', 'parent')).catch(() => undefined)).to.equal(undefined)
      expect(await fs.readFile(box.data(layer.wafer, 'srv', 'big'), 'utf8')).to.equal('big file\n')
      expect((await box.run(['rm', name, layer.wafer, '--yes'])).exitCode).to.equal(0)
      return layer.notShared ?? ''
    }

    it('leaves a planted journal alone: nothing outside the store is emptied, no symlink is made, later pulls work', async function () {
      const outside = path.join(box.root, 'outside')
      await fs.mkdir(path.join(outside, 'data', 'etc'), {recursive: true})
      await fs.writeFile(path.join(outside, 'data', 'etc', 'shadow'), 'root:secret\n')
      const before = await fs.lstat(path.join(outside, 'data', 'etc', 'shadow'))
      await fs.mkdir(path.join(box.wafers, '.split-W'), {recursive: true})
      await fs.writeFile(
        path.join(box.wafers, '.split-W', 'plan.json'),
        JSON.stringify({below: 'evil', emptied: [{mtimeNs: '0', path: 'etc/shadow'}], wafer: 'W'}),
      )
      await fs.symlink(outside, path.join(box.wafers, '.split-W', 'wafer'))
      // A journal whose wafer is real but whose data/etc is a symlink out of the store.
      await fs.mkdir(path.join(box.wafers, '.split-zz', 'wafer', 'data'), {recursive: true})
      await fs.symlink(path.join(outside, 'data', 'etc'), path.join(box.wafers, '.split-zz', 'wafer', 'data', 'etc'))
      await fs.writeFile(
        path.join(box.wafers, '.split-zz', 'plan.json'),
        JSON.stringify({below: 'evil2', emptied: [{mtimeNs: '0', path: 'etc/shadow'}], wafer: 'zz'}),
      )

      const failed = await box.run(['pull', 'oci:/nonexistent:x'])
      expect(failed.exitCode).to.not.equal(0)
      expect(failed.stderr).to.match(
        /\.split-W was left as it is: its wafer is not a real directory; look at it and remove it by hand/,
      )
      expect(failed.stderr).to.match(/\.split-zz was left as it is: etc\/shadow in its wafer's data is not reached/)
      expect(await fs.readFile(path.join(outside, 'data', 'etc', 'shadow'), 'utf8')).to.equal('root:secret\n')
      expect((await fs.lstat(path.join(outside, 'data', 'etc', 'shadow'))).mtimeMs).to.equal(before.mtimeMs)
      for (const name of ['evil', 'evil2']) {
        expect(await fs.lstat(path.join(box.wafers, name)).catch(() => undefined)).to.equal(undefined)
      }

      // Later pulls still work (and split base), and still leave the journals alone.
      await pushed('planted')
      expect((await pull('dedupe/planted:1', 'img')).layers[0].sharedFrom).to.equal('base')
      expect(await fs.readFile(path.join(outside, 'data', 'etc', 'shadow'), 'utf8')).to.equal('root:secret\n')
      expect((await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.split-')).sort()).to.deep.equal([
        '.split-W',
        '.split-zz',
      ])
    })

    it('does not split a wafer a push is packing: the image it pushes stays what it read', async function () {
      await pushed('pushing')
      // A destination that takes the connection and never answers: the push holds base meanwhile.
      const sockets: net.Socket[] = []
      const server = net.createServer((socket) => {
        sockets.push(socket)
      })
      await new Promise<void>((resolve) => {
        server.listen(0, '127.0.0.1', resolve)
      })
      const {port} = server.address() as net.AddressInfo
      const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))
      const pushing = execa(process.execPath, [bin, 'push', 'base', `127.0.0.1:${port}/x:1`, '--tls-verify=false'], {
        env: box.env,
        reject: false,
      })
      try {
        const reached = await new Promise<boolean>((resolve) => {
          server.once('connection', () => resolve(true))
          pushing.then(
            () => resolve(false),
            () => resolve(false),
          )
        })
        expect(reached, 'the push reached its upload').to.equal(true)
        expect(await unpacked('pushing', 'img')).to.equal('a push is packing base')
      } finally {
        pushing.kill('SIGTERM')
        await pushing
        for (const socket of sockets) socket.destroy()
        server.close()
      }
    })

    it('does not split a wafer whose files have names in another wafer', async function () {
      await pushed('linked')
      await box.wafer('other', {files: {}})
      await fs.link(box.data('base', 'srv', 'big'), box.data('other', 'big'))
      expect(await unpacked('linked', 'img')).to.equal(
        "base's srv/big has names outside it, which would change the layer with it",
      )
    })

    it('does not split a wafer whose file is mapped, open, or bind-mounted elsewhere', async function () {
      await pushed('used')
      const python = (code: string) => {
        const child = execa('python3', ['-c', code, box.data('base', 'srv', 'owned')], {reject: false})
        const ready = new Promise<void>((resolve) => {
          child.stdout!.on('data', () => resolve())
        })
        return {child, ready}
      }

      const mapped = python(
        // libc's mmap itself: Python's mmap module keeps a descriptor of its own open.
        [
          'import ctypes,os,sys,time',
          'libc=ctypes.CDLL(None,use_errno=True)',
          'libc.mmap.restype=ctypes.c_void_p',
          'libc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]',
          'fd=os.open(sys.argv[1],os.O_RDWR)',
          'address=libc.mmap(None,4096,3,1,fd,0)',
          'assert address not in (None,ctypes.c_void_p(-1).value)',
          'os.close(fd)',
          "print('ready',flush=True)",
          'time.sleep(120)',
        ].join('\n'),
      )
      try {
        await mapped.ready
        const fds = `/proc/${mapped.child.pid}/fd`
        const open = await Promise.all((await fs.readdir(fds)).map(async (fd) => fs.readlink(path.join(fds, fd))))
        expect(open.filter((file) => file.includes('srv/owned'))).to.deep.equal([])
        expect(await unpacked('used', 'img')).to.match(/^base is still in use through its own files, used by .*python3/)
      } finally {
        mapped.child.kill()
        await mapped.child
      }

      const open = python("import sys,time\nf=open(sys.argv[1],'rb')\nprint('ready',flush=True)\ntime.sleep(120)")
      try {
        await open.ready
        expect(await unpacked('used', 'img2')).to.match(/^base is still in use through its own files/)
      } finally {
        open.child.kill()
        await open.child
      }

      const bound = path.join(box.root, 'bound')
      await fs.mkdir(bound)
      await execa('mount', ['--bind', box.data('base', 'srv'), bound])
      try {
        expect(await unpacked('used', 'img3')).to.match(/^base is still in use through a bind mount of its files at /)
      } finally {
        await execa('umount', [bound])
      }
    })

    it('unpacks the layer, saying why, when checking the wafer fails', async function () {
      await pushed('redirect')
      await execa('setfattr', ['-n', 'trusted.overlay.redirect', '-v', '/elsewhere', box.data('base', 'srv')])
      expect(await unpacked('redirect', 'img')).to.match(/^checking base failed: /)
    })

    it('mv and rm finish a split a pull left midway, and refuse one they cannot finish', async function () {
      await pushed('midway')
      const view = await stackView(box, 'base')
      const layer = (await pull('dedupe/midway:1', 'img')).layers[0].wafer
      expect((await box.run(['rm', 'img', '--yes'])).exitCode).to.equal(0)
      // Killed after the files moved into the journal, as the test above has it.
      const journal = path.join(box.wafers, '.split-base')
      await fs.mkdir(journal)
      await fs.rename(path.join(box.wafers, layer), path.join(journal, 'wafer'))
      await fs.rename(box.data('base'), path.join(journal, 'fresh'))
      await fs.writeFile(path.join(journal, 'plan.json'), JSON.stringify({below: layer, emptied: [], wafer: 'base'}))
      const moved = await box.run(['mv', 'base', 'renamed'])
      expect(moved.exitCode, moved.stderr).to.equal(0)
      expect(await fs.readdir(box.wafers)).to.not.include('.split-base')
      expect(await stackView(box, 'renamed')).to.deep.equal(view)

      // A journal wafers cannot read: mv and rm refuse, naming it, and change nothing.
      await fs.mkdir(path.join(box.wafers, '.split-renamed'))
      await fs.writeFile(path.join(box.wafers, '.split-renamed', 'plan.json'), 'not a plan')
      const before = await snapshot(box.wafers)
      for (const args of [
        ['mv', 'renamed', 'again'],
        ['rm', 'renamed', '--yes'],
      ]) {
        const refused = await box.run(args)
        expect(refused.exitCode).to.not.equal(0)
        expect(refused.stderr).to.match(/wafer renamed has a split that wafers could not finish \(.*\.split-renamed\)/)
        expect(await snapshot(box.wafers)).to.deep.equal(before)
      }
    })
  })
})
