import {expect} from 'chai'
import {execa} from 'execa'
import {randomBytes} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {buildahOn, inBuildahContainer} from '../helpers/buildah.js'
import {readLayout} from '../helpers/layout.js'
import {inPodmanImage} from '../helpers/podman.js'
import {Registry, useRegistry} from '../helpers/registry.js'
import {Sandbox, hasStackTrace, said, useSandbox} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'
import {makeUmociImage, umociRootfs} from '../helpers/umoci.js'

const EDGE_LAYERS = fileURLToPath(new URL('../fixtures/edge-layers.py', import.meta.url))

/** Every entry, times to the microsecond: the precision wafers keeps (docs/oci.md, Layer tars). */
const listing = async (dir: string) => treeListing(dir, {microseconds: true})

/**
 * Expects two listings to be equal; on a difference, the message shows only the lines that differ
 * (chai's diff of two arrays of hundreds of lines shows none).
 */
function expectSameTree(ours: string[], theirs: string[], who: string): void {
  const missing = theirs.filter((line) => !ours.includes(line))
  const extra = ours.filter((line) => !theirs.includes(line))
  expect(
    {extra, missing},
    `wafers' stack against ${who}: lines only wafers has (extra), only ${who} has (missing)`,
  ).to.deep.equal({extra: [], missing: []})
  expect(ours, who).to.deep.equal(theirs)
}

/**
 * A listing without trusted.* xattrs: containers/storage (podman, buildah) drops them when it
 * unpacks a layer, where umoci and wafers keep them.
 */
const untrusted = (lines: string[]) => lines.map((line) => line.replaceAll(/ trusted\.\S+=\S*/g, ''))

/** The line of `file` in a listing, or '' when it is not there. */
const lineOf = (lines: string[], file: string) => lines.find((line) => line.startsWith(`${file} `)) ?? ''

/**
 * What each buildah build holds beyond the umoci base (test/helpers/umoci.ts): RUN rm of lower
 * files (whiteouts), a lower directory removed and made again (opaque), a directory made a file, a
 * file and a symlink made directories, a lower file's mode changed, a file capability and a user
 * xattr (setcap and setfattr of the host, run by its loader from a bind mount, so they stay out of
 * the image), a hard-link chain, symlinks, devices, a FIFO, setuid, setgid, sticky, mode 0000 and
 * a uid past 2^31.
 */
function containerfile(base: string, loader: string): string {
  const tool = (name: string) => `/tools/${loader} --library-path /tools /tools/${name}`
  return [
    `FROM oci:${base}:base`,
    'RUN /bin/busybox mkdir -p /usr/local/bin && /bin/busybox --install -s /usr/local/bin',
    'RUN rm /data/owned /gone/file2 && rm -rf /opaque && mkdir /opaque && echo again > /opaque/again && \\',
    '    rm -rf /gone-dir && echo now a file > /gone-dir && rm /data/layer2 && mkdir /data/layer2 && \\',
    '    echo in > /data/layer2/in && rm /data/link && mkdir /data/link && chmod 0640 /data/hl-a',
    `RUN --mount=type=bind,source=tools,target=/tools mkdir /srv && echo cap > /srv/cap && \\`,
    `    ${tool('setcap')} cap_net_raw+ep /srv/cap && echo attr > /srv/attr && \\`,
    `    ${tool('setfattr')} -n user.color -v blue /srv/attr`,
    'RUN echo one > /srv/hl1 && ln /srv/hl1 /srv/hl2 && ln /srv/hl2 /srv/hl3 && ln -s hl1 /srv/sym && \\',
    '    ln -s /nowhere /srv/dangling && mknod /srv/null c 1 3 && mknod /srv/blk b 7 0 && mkfifo /srv/fifo && \\',
    '    echo s > /srv/suid && chmod 4755 /srv/suid && mkdir /srv/sgid && chmod 2750 /srv/sgid && \\',
    '    echo o > /srv/owned && chown 1234:5678 /srv/owned && echo big > /srv/big && \\',
    '    chown 4000000000:4000000001 /srv/big && chmod 0 /srv/big && ln -s big /srv/biglink && \\',
    '    chown -h 4000000000:4000000001 /srv/biglink && chmod 1777 /srv',
    '',
  ].join('\n')
}

/** Copies `setcap` and `setfattr` with the libraries and loader they need into `dir`; returns the loader's name. */
async function hostTools(dir: string): Promise<string> {
  await fs.mkdir(dir, {recursive: true})
  let loader = ''
  for (const program of ['/usr/sbin/setcap', '/usr/bin/setfattr']) {
    await fs.copyFile(program, path.join(dir, path.basename(program)))
    const {stdout} = await execa('ldd', [program])
    for (const [, file] of stdout.matchAll(/(\/\S+) \(0x/g)) {
      await fs.copyFile(file, path.join(dir, path.basename(file)))
      if (!stdout.includes(`=> ${file}`)) loader = path.basename(file)
    }
  }

  return loader
}

/** How each image is built: `--layers` on vfs (every removal a whiteout), on overlay (opaque markers), squashed. */
const BUILDS = [
  {driver: 'vfs', flags: ['--layers'], name: 'layers'},
  {driver: 'overlay', flags: ['--layers'], name: 'layers-overlay'},
  {driver: 'vfs', flags: ['--squash'], name: 'squashed'},
] as const

describe('oci corpus: images buildah and hand-made tars make, pulled as umoci and podman read them; pushes they all read back', function () {
  this.timeout(600_000)
  let registry: Registry
  let box: Sandbox
  /** Lower-case (buildah's oci: transport wants it); holds the images and each tool's storage. */
  let work: string
  let edge: string

  useRegistry((started) => {
    registry = started
  })

  before(async function () {
    work = path.join('/tmp', `wafers-corpus-${randomBytes(6).toString('hex')}`)
    const base = path.join(work, 'base')
    await makeUmociImage(base, 'base')
    const context = path.join(work, 'context')
    const loader = await hostTools(path.join(context, 'tools'))
    await fs.writeFile(path.join(context, 'Containerfile'), containerfile(base, loader))
    for (const build of BUILDS) {
      const storage = path.join(work, build.name)
      await buildahOn(
        storage,
        build.driver,
        'bud',
        '--isolation',
        'chroot',
        '--cap-add',
        'CAP_MKNOD',
        ...build.flags,
        '-t',
        build.name,
        context,
      )
      await buildahOn(
        storage,
        build.driver,
        'push',
        '--tls-verify=false',
        build.name,
        `docker://${registry.host}/corpus/${build.name}:1`,
      )
    }

    // The hand-made edge shapes: umoci adds the two tars as layers, and writes its manifest and
    // config with a final newline.
    edge = path.join(work, 'edge')
    const tars = path.join(work, 'tars')
    await fs.mkdir(tars)
    await execa('python3', [EDGE_LAYERS, tars])
    await execa('umoci', ['init', '--layout', edge])
    await execa('umoci', ['new', '--image', `${edge}:v1`])
    for (const tar of ['1.tar', '2.tar'])
      await execa('umoci', ['raw', 'add-layer', '--image', `${edge}:v1`, path.join(tars, tar)])
  })

  after(async function () {
    for (const build of BUILDS) {
      await execa('umount', ['-R', '-l', path.join(work, build.name, 'root')], {reject: false})
    }

    await fs.rm(work, {force: true, recursive: true})
  })

  useSandbox((created) => {
    box = created
  })

  /**
   * Pulls REF into `store` (with ARGS) as wafer `name` and stacks it; returns the stack's listing
   * and the layer wafers, bottom first.
   */
  async function pullAndStack(
    store: Sandbox,
    ref: string,
    name: string,
    ...args: string[]
  ): Promise<{layers: string[]; ours: string[]}> {
    const pulled = await store.run(['pull', ref, name, '--json', ...args])
    expect(pulled.exitCode, `${ref}: ${pulled.stderr}`).to.equal(0)
    const stacked = await store.run(['stack', name])
    expect(stacked.exitCode, stacked.stderr).to.equal(0)
    const {layers} = JSON.parse(pulled.stdout) as {layers: Array<{wafer: string}>}
    return {layers: layers.map((layer) => layer.wafer), ours: await listing(store.stack(name))}
  }

  /** A directory of its own under the test's sandbox for one tool's storage or unpack. */
  async function scratch(name: string): Promise<string> {
    const dir = path.join(box.root, name)
    await fs.mkdir(dir)
    return dir
  }

  for (const build of BUILDS) {
    it(`buildah bud ${build.flags.join(' ')} (${build.driver}): pulled from a registry and stacked, file for file what umoci and podman unpack`, async function () {
      const ref = `${registry.host}/corpus/${build.name}:1`
      const {layers, ours} = await pullAndStack(box, ref, 'img', '--tls-verify=false')
      expectSameTree(ours, await listing(await umociRootfs(`docker://${ref}`, await scratch('umoci'))), 'umoci')
      const podman = await inPodmanImage(await scratch('podman'), `docker://${ref}`, listing)
      expectSameTree(untrusted(ours), untrusted(podman), 'podman')

      // The comparison covers what the Containerfile made.
      const line = (file: string) => lineOf(ours, file)
      for (const gone of ['data/owned', 'gone/file2', 'opaque/new1']) expect(line(gone), gone).to.equal('')
      expect(line('opaque/again')).to.match(/ f 0644 0:0 /)
      expect(line('gone-dir')).to.match(/ f 0644 /)
      expect(line('data/layer2')).to.match(/ d 0755 /)
      expect(line('data/link')).to.match(/ d 0755 /)
      expect(line('data/hl-a')).to.match(/ f 0640 /)
      expect(line('srv/cap')).to.include(' security.capability=')
      expect(line('srv/attr')).to.include(` user.color=${Buffer.from('blue').toString('base64')}`)
      expect(line('data/xattr-file')).to.include(' security.capability=')
      // The base layer goes to the registry as umoci made it; a squash is buildah's own tar of it.
      if (build.name === 'squashed') expect(line('data/xattr-file')).to.not.include(' trusted.wafers=')
      else expect(line('data/xattr-file')).to.include(' trusted.wafers=')
      for (const link of ['srv/hl2', 'srv/hl3']) expect(line(link)).to.include(' links=srv/hl1')
      expect(line('srv/sym')).to.include(' -> hl1')
      expect(line('srv/null')).to.match(/ c 0644 0:0 1:3 /)
      expect(line('srv/blk')).to.match(/ b 0644 0:0 7:0 /)
      expect(line('srv/fifo')).to.match(/ p 0644 /)
      expect(line('srv/suid')).to.match(/ f 4755 /)
      expect(line('srv/sgid')).to.match(/ d 2750 /)
      expect(line('srv')).to.match(/ d 1777 /)
      expect(line('srv/owned')).to.match(/ f 0644 1234:5678 /)
      expect(line('srv/big')).to.match(/ f 0000 4000000000:4000000001 /)
      expect(line('srv/biglink')).to.match(/ l 0777 4000000000:4000000001 /)
      expect(line('usr/local/bin/rm')).to.include(' -> /bin/busybox')
      // Each build made the shapes its own way: the vfs one whited out the opaque directory's old
      // file, the overlay one marked the directory opaque (.wh..wh..opq), the squash made one layer.
      expect(layers).to.have.length(build.name === 'squashed' ? 1 : 7)
      if (build.name !== 'squashed') {
        const removal = box.data(layers[4], 'opaque')
        const opaque = await execa('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', removal], {
          reject: false,
        })
        expect(opaque.stdout).to.equal(build.driver === 'overlay' ? 'y' : '')
        const whiteout = await fs.lstat(path.join(removal, 'new1')).catch(() => undefined)
        expect(whiteout?.isCharacterDevice() ?? false).to.equal(build.driver === 'vfs')
      }
    })
  }

  /** The listing of what umoci unpacks of the hand-made edge image: what every pull of it must stack to. */
  async function edgeExpected(): Promise<string[]> {
    const expected = await listing(await umociRootfs(`oci:${edge}:v1`, await scratch('umoci-edge')))
    // The corpus holds every shape it was made to (test/fixtures/edge-layers.py says which).
    const line = (file: string) => lineOf(expected, file)
    expect(line('d')).to.match(/ f 0644 /)
    expect(line('f')).to.match(/ d 0750 /)
    expect(line('s')).to.match(/ d 2775 /)
    expect(line('priv')).to.match(/^priv d 0700 1000:1000 user\.lower=\S+ mtime=1000000000\.000000$/)
    expect(line('hl/b')).to.equal('')
    expect(line('hl/c')).to.include(' links=hl/a')
    expect(line('gone/a')).to.equal('')
    expect(expected.filter((entry) => entry.startsWith('opq/')).map((entry) => entry.split(' ')[0])).to.deep.equal([
      'opq/new',
    ])
    expect(line('p')).to.match(/ p 0600 /)
    expect(line('dev/loop0')).to.match(/ b 0660 0:6 7:0 /)
    expect(line('t/ns')).to.match(/ mtime=1700000000\.123457$/)
    expect(line('t/up')).to.match(/ mtime=1700000001\.000000$/)
    expect(line('t')).to.match(/ mtime=1600000000\.987654$/)
    expect(line('u/max')).to.match(/ f 4750 4294967294:4294967294 /)
    expect(line(`gnu/${'g'.repeat(150)}`)).to.match(/ 5000000:5000001 /)
    expect(line(`gnu/${'k'.repeat(120)}`)).to.include(` -> ${'t'.repeat(200)}`)
    // Hard-link groups are named by their first path, bytewise: hhh... before nnn...
    expect(line(`long/${'n'.repeat(200)}`)).to.include(` links=long/${'h'.repeat(120)}`)
    expect(line(`long/${'L'.repeat(150)}`)).to.include(` -> ../${'y'.repeat(300)}`)
    expect(expected.some((entry) => /^long\/(deep\d+\/){11}deep11\d+ f /.test(entry))).to.equal(true)
    return expected
  }

  it('pulls hand-made edge shapes through oci:, a registry, oci-archive and docker-archive as umoci unpacks them, and as podman does', async function () {
    const expected = await edgeExpected()
    const image = await readLayout(edge, 'v1')
    // umoci ends its manifest and config with a newline; each transport below carries them so.
    expect([image.manifest.at(-1), image.config.at(-1)]).to.deep.equal([0x0a, 0x0a])
    await registry.pushLayout(edge, 'v1', 'corpus/edge')
    const archives = path.join(box.root, 'archives')
    await fs.mkdir(archives)
    await execa('skopeo', ['copy', '-q', `oci:${edge}:v1`, `oci-archive:${archives}/edge.tar:v1`])
    await execa('skopeo', ['copy', '-q', `oci:${edge}:v1`, `docker-archive:${archives}/edge.docker.tar:corpus/edge:v1`])
    for (const ref of [
      `oci:${edge}:v1`,
      `${registry.host}/corpus/edge:v1`,
      `oci-archive:${archives}/edge.tar:v1`,
      `docker-archive:${archives}/edge.docker.tar`,
    ]) {
      const store = await Sandbox.create()
      try {
        const {layers, ours} = await pullAndStack(store, ref, 'edge', '--tls-verify=false')
        expect(layers, ref).to.have.length(2)
        expectSameTree(ours, expected, `umoci (${ref})`)
      } finally {
        await store.cleanup()
      }
    }

    // podman (vfs) stamps a directory with the time of its unpack when a later layer changes it
    // without listing it (hl, gone, opq, priv here), where umoci and wafers keep the layer's time.
    const podman = await inPodmanImage(await scratch('podman'), `docker://${registry.host}/corpus/edge:v1`, listing)
    const implicit = /^(hl|gone|opq|priv) d .* mtime=\S+$/
    const stamped = (lines: string[]) =>
      lines.map((line) => (implicit.test(line) ? line.replace(/ mtime=\S+$/, '') : line))
    expectSameTree(stamped(expected), stamped(podman), 'podman')
  })

  /**
   * Makes wafer `mine` on the pulled edge image, by hand, with what a wafer can hold: a whiteout
   * and an opaque directory over the layers below, a directory over a lower file, a file and a
   * symlink over lower directories, a hard-link triple, a FIFO, devices, user.*, trusted.* and
   * security.capability xattrs, setuid, setgid, sticky and mode 0000, a uid past 2^31 (a symlink's
   * too), times to the nanosecond, and long names.
   */
  async function makeEdgeWafer(): Promise<void> {
    const pulled = await box.run(['pull', `oci:${edge}:v1`, 'edge'])
    expect(pulled.exitCode, pulled.stderr).to.equal(0)
    expect((await box.run(['create', 'mine', 'edge'])).exitCode).to.equal(0)
    const data = (...file: string[]) => box.data('mine', ...file)
    await fs.mkdir(data('target'))
    await execa('mknod', ['-m', '0', data('target', 't1'), 'c', '0', '0'])
    await fs.mkdir(data('dev'))
    await execa('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', data('dev')])
    await execa('mknod', ['-m', '0666', data('dev', 'zero'), 'c', '1', '5'])
    await execa('mknod', ['-m', '0600', data('dev', 'sda'), 'b', '8', '0'])
    await fs.mkdir(data('d'))
    await fs.writeFile(data('d', 'sub'), 'a directory over a file\n')
    await fs.writeFile(data('f'), 'a file over a directory\n')
    await fs.symlink('target', data('s'))
    await fs.mkdir(data('links'), {mode: 0o2755})
    await fs.chmod(data('links'), 0o2755)
    await fs.writeFile(data('links', 'one'), 'three names\n')
    await fs.link(data('links', 'one'), data('links', 'two'))
    await fs.link(data('links', 'two'), data('links', 'three'))
    await execa('mkfifo', ['-m', '0640', data('links', 'fifo')])
    await fs.writeFile(data('links', 'attrs'), 'attributes\n')
    await execa('setfattr', ['-n', 'user.color', '-v', 'green', data('links', 'attrs')])
    await execa('setfattr', ['-n', 'trusted.note', '-v', 'kept', data('links', 'attrs')])
    await execa('setcap', ['cap_net_bind_service+ep', data('links', 'attrs')])
    await fs.writeFile(data('links', 'suid'), '#!/bin/sh\n')
    await fs.chmod(data('links', 'suid'), 0o4711)
    await fs.writeFile(data('links', 'none'), 'no bits\n')
    await fs.chmod(data('links', 'none'), 0)
    await fs.mkdir(data('tmp'))
    await fs.chmod(data('tmp'), 0o1777)
    await fs.writeFile(data('links', 'big'), 'big uid\n')
    await fs.chown(data('links', 'big'), 4_000_000_000, 4_000_000_001)
    await fs.symlink('big', data('links', 'big-link'))
    await fs.lchown(data('links', 'big-link'), 4_000_000_000, 4_000_000_001)
    await fs.writeFile(data('links', 'n'.repeat(250)), 'a long name\n')
    await fs.symlink(`../${'z'.repeat(400)}`, data('links', 'long-target'))
    await execa('touch', ['-h', '-d', '@1700000000.123456789', data('links', 'one'), data('links', 'big-link')])
    await execa('touch', ['-d', '@1600000000.5', data('links'), data('tmp')])
  }

  it('pushes a stack of every edge shape to a registry that umoci, podman and buildah read back as wafers stacks it', async function () {
    await makeEdgeWafer()
    const ref = `${registry.host}/corpus/mine:1`
    const pushed = await box.run(['push', 'mine', ref, '--tls-verify=false'])
    expect(pushed.exitCode, pushed.stderr).to.equal(0)
    expect((await box.run(['stack', 'mine'])).exitCode).to.equal(0)
    const ours = await listing(box.stack('mine'))
    const line = (file: string) => lineOf(ours, file)
    expect(line('target/t1')).to.equal('')
    expect(ours.filter((entry) => entry.startsWith('dev/')).map((entry) => entry.split(' ')[0])).to.deep.equal([
      'dev/sda',
      'dev/zero',
    ])
    expect(line('d')).to.match(/ d 0755 /)
    expect(line('f')).to.match(/ f 0644 /)
    expect(line('s')).to.include(' -> target')
    expect(line('links/three')).to.include(' links=links/one')
    expect(line('links/one')).to.match(/ mtime=1700000000\.123457 /)
    expect(line('links/attrs')).to.include(' security.capability=').and.include(' trusted.note=')

    expectSameTree(ours, await listing(await umociRootfs(`docker://${ref}`, await scratch('umoci'))), 'umoci')
    const podman = await inPodmanImage(await scratch('podman'), `docker://${ref}`, listing)
    expectSameTree(untrusted(ours), untrusted(podman), 'podman')
    const buildah = await inBuildahContainer(await scratch('buildah'), `docker://${ref}`, listing)
    expectSameTree(untrusted(ours), untrusted(buildah), 'buildah')
    // Stacked again, the tree is the same: overlay's markers stay out of it (wafers' mounts read the
    // trusted form and would show the user form systemd's mounts read as an attribute).
    expect((await box.run(['unstack', 'mine'])).exitCode).to.equal(0)
    expect((await box.run(['stack', 'mine'])).exitCode).to.equal(0)
    expect(await listing(box.stack('mine'))).to.deep.equal(ours)
  })

  it('refuses to push a wafer holding a socket, naming it, and the registry gets nothing', async function () {
    await box.wafer('sock', {files: {'run/keep': 'kept\n'}})
    const socket = box.data('sock', 'run', 'control.sock')
    await execa('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', socket])
    const pushed = await box.run(['push', 'sock', `${registry.host}/corpus/sock:1`, '--tls-verify=false'])
    expect(pushed.exitCode).to.equal(1)
    expect(said(pushed.stderr)).to.include(`${socket} is a socket, which a layer tar cannot carry.`)
    expect(hasStackTrace(pushed.stderr)).to.equal(false)
    const inspect = await execa(
      'skopeo',
      ['inspect', '--tls-verify=false', `docker://${registry.host}/corpus/sock:1`],
      {
        reject: false,
      },
    )
    expect(inspect.exitCode).to.not.equal(0)
  })
})
