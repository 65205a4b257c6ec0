import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs, lstatSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {readLayout, writeLayoutOfTars} from '../helpers/layout.js'
import {Registry, useRegistry} from '../helpers/registry.js'
import {Sandbox, hasStackTrace, said, snapshot, useSandbox} from '../helpers/sandbox.js'
import {
  ensureSidPull,
  enterableSid,
  inSid,
  inSidMachine,
  mountedBySystemd,
  SID_ROOT,
  trustInSid,
} from '../helpers/systemd.js'
import {treeListing} from '../helpers/tree.js'
import {makeUmociImage} from '../helpers/umoci.js'

// Overlay markers are hidden by the mount that reads them and shown by the other (wafers' mounts
// read trusted.overlay.*, systemd's user.overlay.*): the trees are compared without either.
const noMarkers = (lines: string[]) => lines.map((line) => line.replaceAll(/ (trusted|user)\.overlay\.[^ ]+/g, ''))

/**
 * The trees compared, also without the time of `gone/`: its layer lists `gone/` (2020) and, after
 * other entries, its whiteout `gone/.wh.file1` (umoci writes whiteouts last). systemd 262 sets a
 * directory's time when it leaves it, then writes the whiteout into it again: the time the tar
 * gives is gone from importctl's copy (and so from anything made of it) before wafers sees it.
 */
const compared = (lines: string[]) => noMarkers(lines).map((line) => line.replace(/^(gone d .*) mtime=\d+$/, '$1'))

/** Polls `done` every 100 ms, for up to a minute. */
async function waitFor(done: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 600 && !(await done()); i++) {
    await new Promise((resolve) => {
      setTimeout(resolve, 100)
    })
  }
}

describe('living beside importctl: what systemd-pull oci (systemd 262) pulled, taken in and reused', function () {
  this.timeout(900_000)
  let box: Sandbox
  let registry: Registry
  let layout: string
  let expected: string[]
  const undo: Array<() => Promise<void>> = []
  const image = () => `${registry.host}/importctl/img:v1`

  // Before the sandbox's own cleanup: importctl makes each layer's top directory immutable.
  afterEach(async () => {
    for (const step of undo.splice(0).reverse()) await step()
    const layers = await fs.readdir(box.stacks).catch(() => [] as string[])
    for (const layer of layers.filter((entry) => entry.startsWith('.oci-'))) {
      await execa('chattr', ['-i', path.join(box.stacks, layer)], {reject: false})
    }
  })

  useSandbox((made) => {
    box = made
  })

  useRegistry(
    (started) => {
      registry = started
    },
    {tls: true},
  )

  before(async () => {
    await ensureSidPull()
    layout = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-importctl-'))
    // systemd-pull 262 fails on a trusted.* attribute: "Failed to set xattr 'trusted.wafers' of
    // 'data/xattr-file': Operation not permitted" (its tar runs without that privilege).
    await makeUmociImage(path.join(layout, 'oci'), 'v1', {trustedXattr: false})
    await execa('umoci', ['config', '--image', `${path.join(layout, 'oci')}:v1`, '--config.cmd', '/bin/sh'])
    await registry.pushLayout(path.join(layout, 'oci'), 'v1', 'importctl/img')
    // The tree the image stands for, as another tool unpacks it.
    await execa('umoci', ['unpack', '--image', `${path.join(layout, 'oci')}:v1`, path.join(layout, 'bundle')])
    expected = await treeListing(path.join(layout, 'bundle', 'rootfs'))
  })

  after(async () => {
    if (layout) await fs.rm(layout, {force: true, recursive: true})
  })

  beforeEach(async () => {
    undo.push(await enterableSid([box.root]), await trustInSid(registry.certificate!, box.root))
    // A /run of its own, as systemd expects one (tmpfs): nspawn refuses to clean a leftover
    // /run/systemd/nspawn/propagate/NAME on a disk file system, the cached root's.
    const run = path.join(SID_ROOT, 'run')
    await execa('mount', ['-t', 'tmpfs', 'tmpfs', run])
    undo.push(async () => {
      await execa('umount', ['-l', run], {reject: false})
    })
  })

  /** systemd-pull oci of the test image into $STACKS as NAME, over HTTPS with the registry's own certificate. */
  async function systemdPull(name: string): Promise<void> {
    await fs.mkdir(box.stacks, {recursive: true})
    const pulled = await inSid(['/usr/lib/systemd/systemd-pull', 'oci', `--image-root=${box.stacks}`, image(), name])
    expect(pulled.exitCode, pulled.stderr).to.equal(0)
  }

  /** importctl's directories of the image's layers, bottom first, as its .mstack links them. */
  async function importctlLayers(name: string): Promise<string[]> {
    const mstack = path.join(box.stacks, `${name}.mstack`)
    const links = (await fs.readdir(mstack)).filter((entry) => entry.startsWith('layer@')).sort()
    return Promise.all(links.map(async (link) => path.resolve(mstack, await fs.readlink(path.join(mstack, link)))))
  }

  it('adopt takes the image in without copying a file, and it stacks as umoci unpacks it, under wafers and systemd alike', async () => {
    await systemdPull('img')
    const mstack = path.join(box.stacks, 'img.mstack')
    const layers = await importctlLayers('img')
    expect(layers.map((dir) => path.basename(dir))).to.have.length(3)
    for (const dir of layers) expect(path.basename(dir)).to.match(/^\.oci-sha256:[\da-f]{64}$/)
    const settings = await fs.readFile(path.join(box.stacks, 'img.nspawn'), 'utf8')
    // The machine runs once, on systemd's own mount: its changes land in rw/data.
    const ran = await inSidMachine(mstack, 'echo made in the machine > /etc/made && rm /data/owned')
    expect(ran.exitCode, ran.stderr).to.equal(0)
    const machineData = lstatSync(path.join(mstack, 'rw', 'data')).ino
    const importctlBefore = await Promise.all(layers.map((dir) => snapshot(dir)))

    const adopted = await box.run(['adopt', 'img', '--json'])
    expect(adopted.exitCode, adopted.stderr).to.equal(0)
    const result = JSON.parse(adopted.stdout) as {
      layers: Array<{from: string; made: boolean; wafer: string}>
      moved: boolean
    }
    expect(result.moved).to.equal(true)
    expect(result.layers.map((layer) => layer.from)).to.deep.equal(layers)
    expect(result.layers.every((layer) => layer.made)).to.equal(true)
    // No file copied: the busybox of layer 1 is importctl's inode, the machine's files were moved.
    const [bottom] = result.layers
    expect(lstatSync(box.data(bottom.wafer, 'bin', 'busybox')).ino).to.equal(
      lstatSync(path.join(layers[0], 'bin', 'busybox')).ino,
    )
    expect(lstatSync(box.data('img')).ino).to.equal(machineData)
    // importctl's layers are as they were; its .mstack now stacks the wafers; its settings stay.
    expect(await Promise.all(layers.map((dir) => snapshot(dir)))).to.deep.equal(importctlBefore)
    expect(await fs.readlink(path.join(mstack, 'layer@0'))).to.equal(box.data(bottom.wafer))
    expect(await fs.readlink(path.join(mstack, 'rw'))).to.equal(path.join(box.wafers, 'img'))
    expect(await fs.readFile(path.join(box.stacks, 'img.nspawn'), 'utf8')).to.equal(settings)

    const bySystemd = await mountedBySystemd(box.root, mstack)
    const unstacked = await box.run(['unstack', 'img'])
    expect(unstacked.exitCode, unstacked.stderr).to.equal(0)
    const stacked = await box.run(['stack', 'img'])
    expect(stacked.exitCode, stacked.stderr).to.equal(0)
    const byWafers = await treeListing(box.stack('img'))
    expect(noMarkers(byWafers)).to.deep.equal(noMarkers(bySystemd))
    // Where the machine changed nothing (not in its own files), the image as umoci unpacks it; where
    // it did, what it made (and not what it removed).
    const own = new Set((await treeListing(box.data('img'))).map((line) => line.split(' ')[0]))
    const untouched = (lines: string[]) => compared(lines).filter((line) => !own.has(line.split(' ')[0]))
    expect(untouched(byWafers)).to.deep.equal(untouched(expected))
    expect(byWafers.find((line) => line.startsWith('etc/made '))).to.include(' 20B ')
    expect(byWafers.some((line) => line.startsWith('data/owned '))).to.equal(false)
    expect(expected.some((line) => line.startsWith('data/owned '))).to.equal(true)

    const listed = await box.run(['list', '--no-size'])
    expect(listed.stdout).to.match(/\bimg\b.*from importctl's img\.mstack/)
    expect(listed.stdout).to.include('image layer, from importctl')

    // A layer shared with importctl is never a stack's writable top: a change would write into
    // importctl's files too. Nothing is mounted, and the suggested stack on it works.
    expect(await box.run(['unstack', 'img'])).to.include({exitCode: 0})
    const onTop = await box.run(['stack', bottom.wafer])
    expect(onTop.exitCode).to.not.equal(0)
    expect(said(onTop.stderr)).to.include(`wafer ${bottom.wafer} is a layer shared with importctl by hard links`)
    expect(hasStackTrace(onTop.stderr)).to.equal(false)
    expect(await fs.readdir(box.stacks)).to.not.include(bottom.wafer)
    const child = await box.run(['stack', `${bottom.wafer}-top`, bottom.wafer])
    expect(child.exitCode, child.stderr).to.equal(0)
    expect(lstatSync(path.join(box.stack(`${bottom.wafer}-top`), 'bin', 'busybox')).isFile()).to.equal(true)
    expect(await box.run(['unstack', `${bottom.wafer}-top`])).to.include({exitCode: 0})
  })

  it('adopt run again finishes an adopt stopped after the machine files became the wafer, and refuses a NAME of another origin', async () => {
    await systemdPull('img')
    const mstack = path.join(box.stacks, 'img.mstack')
    const ran = await inSidMachine(mstack, 'echo made in the machine > /etc/made')
    expect(ran.exitCode, ran.stderr).to.equal(0)
    // importctl's stack as it was, kept aside (cp -a: links, owners, attributes as they are).
    const aside = path.join(box.root, 'img.mstack.aside')
    await execa('cp', ['-a', mstack, aside])
    const adopted = await box.run(['adopt', 'img'])
    expect(adopted.exitCode, adopted.stderr).to.equal(0)
    const bySystemd = await mountedBySystemd(box.root, mstack)

    // An adopt killed after it moved rw/data into wafer img, before it rewrote img.mstack: the wafer
    // as adopt made it, importctl's stack as it was but for the machine's files.
    await fs.rm(mstack, {force: true, recursive: true})
    await fs.rename(aside, mstack)
    await fs.rm(path.join(mstack, 'rw', 'data'), {force: true, recursive: true})
    const stopped = await box.run(['stack', 'img', '--mstack'])
    expect(stopped.exitCode).to.not.equal(0)

    const again = await box.run(['adopt', 'img', '--json'])
    expect(again.exitCode, again.stderr).to.equal(0)
    expect(JSON.parse(again.stdout)).to.include({moved: true, resumed: true})
    expect(await mountedBySystemd(box.root, mstack)).to.deep.equal(bySystemd)
    expect(await fs.readFile(box.data('img', 'etc', 'made'), 'utf8')).to.equal('made in the machine\n')
    const plain = await box.run(['adopt', 'img'])
    expect(plain.exitCode).to.not.equal(0)
    expect(said(plain.stderr)).to.include('wafer img already exists; img was not adopted.')

    // A wafer that no adopt made is not taken for a stopped one, and nothing changes.
    await fs.rm(mstack, {force: true, recursive: true})
    await systemdPull('other')
    expect((await box.run(['create', 'other'])).exitCode).to.equal(0)
    const before = await snapshot(path.join(box.stacks, 'other.mstack'))
    const refused = await box.run(['adopt', 'other'])
    expect(refused.exitCode).to.not.equal(0)
    expect(said(refused.stderr)).to.include('wafer other already exists; other was not adopted.')
    expect(hasStackTrace(refused.stderr)).to.equal(false)
    expect(await snapshot(path.join(box.stacks, 'other.mstack'))).to.deep.equal(before)
  })

  it('wafers pull of an image importctl pulled takes its layers by hard links, downloads none, and leaves its .mstack working', async () => {
    await systemdPull('img')
    const layers = await importctlLayers('img')
    const mstack = path.join(box.stacks, 'img.mstack')
    const bySystemdBefore = await mountedBySystemd(box.root, mstack)

    const pulled = await box.run(['pull', '--tls-verify=false', '--json', `docker://${image()}`, 'mine'])
    expect(pulled.exitCode, pulled.stderr).to.equal(0)
    const result = JSON.parse(pulled.stdout) as {layers: Array<{importctl?: string; made: boolean; wafer: string}>}
    expect(result.layers.map((layer) => layer.importctl)).to.deep.equal(layers)
    for (const [i, layer] of result.layers.entries()) {
      const [file] = (await fs.readdir(layers[i], {recursive: true})).filter(
        (rel) => lstatSync(path.join(layers[i], rel)).isFile() && !path.basename(rel).startsWith('.wh.'),
      )
      expect(lstatSync(box.data(layer.wafer, file)).ino, file).to.equal(lstatSync(path.join(layers[i], file)).ino)
    }

    expect((await box.run(['stack', 'mine'])).exitCode).to.equal(0)
    expect(compared(await treeListing(box.stack('mine')))).to.deep.equal(compared(expected))
    expect((await box.run(['unstack', 'mine'])).exitCode).to.equal(0)
    // importctl's own stack still mounts as before (whatever systemd 262 makes of its whiteouts).
    expect(await mountedBySystemd(box.root, mstack)).to.deep.equal(bySystemdBefore)

    // And when importctl's copies go, the wafers keep their files.
    for (const dir of layers) {
      await execa('chattr', ['-i', dir])
      await fs.rm(dir, {force: true, recursive: true})
    }

    expect((await box.run(['stack', 'mine'])).exitCode).to.equal(0)
    expect(compared(await treeListing(box.stack('mine')))).to.deep.equal(compared(expected))
  })

  it('wafers pull downloads a layer after all whose importctl copy cannot be taken, and keeps the ones it downloaded', async () => {
    await systemdPull('img')
    const layers = await importctlLayers('img')
    // Layer 2's copy carries an overlay attribute of its own (as systemd would apply one from a tar).
    const odd = path.join(layers[1], 'data', 'layer2')
    await execa('setfattr', ['-n', 'trusted.overlay.redirect', '-v', '/elsewhere', odd])
    // Layer 3 importctl never had: it is downloaded before layer 2's turn, and must stay.
    await execa('chattr', ['-i', layers[2]])
    await fs.rm(layers[2], {force: true, recursive: true})

    const pulled = await box.run(['pull', '--tls-verify=false', '--json', `docker://${image()}`, 'mine'])
    expect(pulled.exitCode, pulled.stderr).to.equal(0)
    const result = JSON.parse(pulled.stdout) as {layers: Array<{importctl?: string; made: boolean}>}
    expect(result.layers.map((layer) => layer.importctl)).to.deep.equal([layers[0], undefined, undefined])
    expect(result.layers.every((layer) => layer.made)).to.equal(true)
    expect((await box.run(['stack', 'mine'])).exitCode).to.equal(0)
    expect(compared(await treeListing(box.stack('mine')))).to.deep.equal(compared(expected))
  })

  it('adopt refuses, changing nothing, a machine that runs and an .mstack importctl did not write', async () => {
    await systemdPull('img')
    const mstack = path.join(box.stacks, 'img.mstack')
    const at = path.join(box.root, 'running')
    await fs.mkdir(at)
    const up = await inSid(['systemd-mstack', '--mount', mstack, at])
    expect(up.exitCode, up.stderr).to.equal(0)
    // Mounting made rw/data and rw/work: what is there now must stay.
    let before = await snapshot(box.root)
    try {
      const busy = await box.run(['adopt', 'img'])
      expect(busy.exitCode).to.not.equal(0)
      expect(said(busy.stderr)).to.include(
        `${mstack} is mounted at ${path.join(SID_ROOT, at)}: a machine runs on it; nothing was moved.`,
      )
      expect(hasStackTrace(busy.stderr)).to.equal(false)
    } finally {
      await inSid(['systemd-mstack', '--umount', at])
    }

    expect(await snapshot(box.root)).to.deep.equal(before)
    await fs.rmdir(at)
    before = await snapshot(box.root)

    // A machine mounts its stack in a mount namespace of its own, which the table here does not show.
    const marker = path.join(box.root, 'elsewhere-up')
    const elsewhere = execa(
      'unshare',
      [
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        `chroot ${SID_ROOT} systemd-mstack --mount ${mstack} ${at} && touch ${marker} && exec sleep 300`,
      ],
      {reject: false, stdin: 'ignore'},
    )
    try {
      await fs.mkdir(at, {recursive: true})
      await waitFor(
        async () =>
          (await fs.access(marker).then(
            () => true,
            () => false,
          )) || elsewhere.exitCode !== null,
      )
      const running = await box.run(['adopt', 'img'])
      expect(running.exitCode, running.stdout + running.stderr).to.not.equal(0)
      expect(said(running.stderr)).to.match(
        /is mounted at \S+ in the mount namespace of \d+ \(sleep\): a machine runs on it; nothing was moved\./,
      )
    } finally {
      elsewhere.kill('SIGKILL')
      await elsewhere
      await fs.rm(marker, {force: true})
      await fs.rmdir(at).catch(() => {})
    }

    expect(await snapshot(box.root)).to.deep.equal(before)
    await fs.mkdir(path.join(mstack, 'bind@srv'))
    const odd = await box.run(['adopt', 'img'])
    expect(odd.exitCode).to.not.equal(0)
    expect(said(odd.stderr)).to.include(
      `${path.join(mstack, 'bind@srv')} is not something importctl pull-oci writes; img was not adopted.`,
    )
    await fs.rmdir(path.join(mstack, 'bind@srv'))
    expect(await snapshot(box.root)).to.deep.equal(before)
  })
})

describe('adopt and pull beside importctl: what a review found', function () {
  let box: Sandbox

  useSandbox((made) => {
    box = made
  })

  /** A hand-made image root as importctl pull-oci leaves one: layer directories, NAME.mstack, NAME.oci-config. */
  async function importctlTree(name: string, layers: Array<Record<string, string>>): Promise<string[]> {
    await fs.mkdir(box.stacks, {recursive: true})
    const mstack = path.join(box.stacks, `${name}.mstack`)
    await fs.mkdir(path.join(mstack, 'rw', 'data'), {recursive: true})
    await fs.mkdir(path.join(mstack, 'rw', 'work'))
    const dirs: string[] = []
    for (const [k, files] of layers.entries()) {
      const digest = `sha256:${String(k + 1).repeat(64)}`
      const dir = path.join(box.stacks, `.oci-${digest}`)
      for (const [file, content] of Object.entries(files)) {
        await fs.mkdir(path.dirname(path.join(dir, file)), {recursive: true})
        await fs.writeFile(path.join(dir, file), content)
      }

      await fs.symlink(`../.oci-${digest}`, path.join(mstack, `layer@${k}`))
      dirs.push(dir)
    }

    const diffIds = layers.map((_, k) => `sha256:${String(k + 5).repeat(64)}`)
    const config = {architecture: 'amd64', config: {}, os: 'linux', rootfs: {diff_ids: diffIds, type: 'layers'}}
    await fs.writeFile(path.join(box.stacks, `${name}.oci-config`), JSON.stringify(config))
    return dirs
  }

  it('a refused adopt takes back the layer wafers it made before the refusal: the store is as it was', async () => {
    const [, second] = await importctlTree('img', [{'bin/tool': 'tool\n'}, {'etc/odd': 'odd\n'}])
    await execa('setfattr', ['-n', 'trusted.overlay.redirect', '-v', '/elsewhere', path.join(second, 'etc', 'odd')])
    await fs.mkdir(box.wafers, {recursive: true})
    const before = await snapshot(box.wafers)
    const stacksBefore = await snapshot(box.stacks)
    const adopted = await box.run(['adopt', 'img'])
    expect(adopted.exitCode).to.not.equal(0)
    expect(said(adopted.stderr)).to.include('carries the overlay attribute trusted.overlay.redirect on "etc/odd"')
    expect(hasStackTrace(adopted.stderr)).to.equal(false)
    expect(await snapshot(box.wafers), 'the store after the refusal').to.deep.equal(before)
    expect(await snapshot(box.stacks), "importctl's files after the refusal").to.deep.equal(stacksBefore)
  })

  it('adopt refuses an image root anyone may write to, and pull downloads a layer it could have been planted in', async () => {
    await importctlTree('img', [{'etc/hello': 'evil\n'}])
    await fs.chmod(box.stacks, 0o1777)
    const adopted = await box.run(['adopt', 'img'])
    expect(adopted.exitCode).to.not.equal(0)
    expect(said(adopted.stderr)).to.match(/img was not adopted: .* is not root's alone \(owner 0, mode 1777\)/)
    expect(await fs.readdir(box.wafers).catch(() => [])).to.deep.equal([])

    // The same planted content under the name of a real layer's digest: pull takes the real one.
    const layout = path.join(box.root, 'layout')
    const tar = path.join(box.root, 'layer.tar')
    const tree = path.join(box.root, 'tree')
    await fs.mkdir(path.join(tree, 'etc'), {recursive: true})
    await fs.writeFile(path.join(tree, 'etc', 'hello'), 'real\n')
    await execa('tar', ['--create', '--file', tar, '--directory', tree, '--owner=0', '--group=0', 'etc'])
    await writeLayoutOfTars(layout, 'v1', [await fs.readFile(tar)])
    const [layer] = (await readLayout(layout, 'v1')).layers
    const planted = path.join(box.stacks, `.oci-${layer.digest}`)
    await fs.mkdir(path.join(planted, 'etc'), {recursive: true})
    await fs.writeFile(path.join(planted, 'etc', 'hello'), 'evil\n')
    await fs.chown(planted, 65_534, 65_534)
    const pulled = await box.run(['pull', `oci:${layout}:v1`, 'app'])
    expect(pulled.exitCode, pulled.stderr).to.equal(0)
    expect(pulled.stderr).to.match(
      /importctl's copy of layer 1 cannot be taken \(.*not root's alone.*\); downloading it/,
    )
    const [wafer] = (await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('layer-'))
    expect(await fs.readFile(box.data(wafer, 'etc', 'hello'), 'utf8')).to.equal('real\n')
  })
})
