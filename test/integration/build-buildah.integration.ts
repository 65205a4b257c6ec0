import {expect} from 'chai'
import {execa} from 'execa'
import {createHash, randomBytes} from 'node:crypto'
import http from 'node:http'
import type {AddressInfo} from 'node:net'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {buildah as buildahIn, budIntoBundle} from '../helpers/buildah.js'
import {Sandbox, useSandbox} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'
import {makeUmociImage} from '../helpers/umoci.js'

/** What each tool adds at run time, not part of what the Containerfile makes. */
const RUNTIME = ['dev', 'proc', 'sys', 'run', 'etc/hostname', 'etc/hosts', 'etc/resolv.conf']

/**
 * A listing without mtimes: both tools stamp what RUN makes, and the directories steps touch, with
 * the time they ran.
 */
async function listing(root: string): Promise<string[]> {
  return (await treeListing(root, {ignore: RUNTIME})).map((line) => line.replace(/ mtime=\d+/, ''))
}

const containerfileFor = (base: string) =>
  [
    `FROM oci:${base}:base`,
    'ARG GREETING=hello',
    'ENV APP_HOME=/srv',
    'WORKDIR /srv',
    'COPY app/ /srv/app/',
    'COPY --chmod=0600 secret.txt ./',
    'COPY --chown=1234:5678 app/*.sh /usr/local/bin/',
    'RUN /bin/busybox mkdir -p /var/lib/demo && echo "$GREETING from $APP_HOME" > /var/lib/demo/greeting && \\',
    '    /bin/busybox rm /data/owned /gone/file2 && /bin/busybox chmod 700 /srv/app',
    'RUN ["/bin/busybox", "ln", "-s", "/srv/app/run.sh", "/usr/bin/run-app"]',
    // What a RUN may do: the capabilities it holds and may ever get back.
    "RUN /bin/busybox grep -E '^Cap(Eff|Bnd)' /proc/self/status > /tmp/caps",
    // USER as a name the image lists, as bare numbers, and as a uid it does not list (busybox has
    // no getent, so nspawn's --user cannot look any of them up: wafers switches to the numbers).
    'RUN echo app:x:1500:1500::/home/app:/bin/sh >> /etc/passwd && echo app:x:1500: >> /etc/group && \\',
    '    /bin/busybox mkdir -p /home/app && /bin/busybox chown 1500:1500 /home/app',
    'USER owner',
    'RUN echo "$(/bin/busybox id -u):$(/bin/busybox id -g) $HOME" > /tmp/id-owner',
    'USER app',
    'RUN echo "$(/bin/busybox id -u):$(/bin/busybox id -g) $HOME" > /home/app/id',
    'USER 1234:1500',
    'RUN echo "$(/bin/busybox id -u):$(/bin/busybox id -g) $HOME" > /tmp/id-numbers',
    'USER 4321',
    'RUN echo "$(/bin/busybox id -u):$(/bin/busybox id -g) $HOME" > /tmp/id-unknown',
    'USER root',
    'ADD files.tar.gz /opt/',
    'LABEL org.example.name=demo',
    'CMD ["/usr/bin/run-app"]',
    '',
  ].join('\n')

describe('wafers build equals buildah bud of the same Containerfile from the same OCI image', function () {
  let box: Sandbox
  let work: string
  useSandbox((created) => {
    box = created
  })

  beforeEach(async function () {
    // skopeo's and buildah's oci: transport wants a lower-case path.
    work = path.join('/tmp', `wafers-buildah-${randomBytes(6).toString('hex')}`)
    await fs.mkdir(work)
  })

  afterEach(async function () {
    await execa('umount', ['-R', '-l', path.join(work, 'root')], {reject: false})
    await fs.rm(work, {force: true, recursive: true})
  })

  it('stacks to the same tree, file for file, and keeps the same config', async function () {
    this.timeout(10 * 60 * 1000)
    const base = path.join(work, 'base')
    await makeUmociImage(base, 'base')
    const context = path.join(work, 'context')
    await fs.mkdir(path.join(context, 'app', 'lib'), {recursive: true})
    await fs.writeFile(path.join(context, 'app', 'run.sh'), '#!/bin/sh\necho running\n', {mode: 0o755})
    await fs.chmod(path.join(context, 'app', 'run.sh'), 0o755)
    await fs.writeFile(path.join(context, 'app', 'lib', 'data.txt'), 'data\n')
    await fs.writeFile(path.join(context, 'secret.txt'), 'secret\n')
    const files = path.join(work, 'files')
    await fs.mkdir(path.join(files, 'etc'), {recursive: true})
    await fs.writeFile(path.join(files, 'etc', 'demo.conf'), 'x=1\n')
    await execa('tar', ['-czf', path.join(context, 'files.tar.gz'), '-C', files, '.'])
    await fs.writeFile(path.join(context, 'Containerfile'), containerfileFor(base))

    const bundle = await budIntoBundle(work, context)

    const build = await box.run(['build', '-t', 'web', context])
    expect(build.exitCode, build.stderr).to.equal(0)
    expect((await box.run(['stack', 'web'])).exitCode).to.equal(0)

    const ours = await listing(box.stack('web'))
    const theirs = await listing(path.join(bundle, 'rootfs'))
    expect(ours).to.deep.equal(theirs)
    expect(ours.some((line) => line.startsWith('var/lib/demo/greeting f'))).to.equal(true)
    expect(ours.some((line) => line.startsWith('data/owned '))).to.equal(false)
    // Each RUN ran as buildah's did (the listings above compare what they wrote, owners included):
    // a user the image lists, bare numbers, and a uid it does not list (group 0, home /).
    const text = async (file: string) => fs.readFile(path.join(box.stack('web'), file), 'utf8')
    expect(await text('tmp/id-owner')).to.equal('1234:5678 /\n')
    expect(await text('home/app/id')).to.equal('1500:1500 /home/app\n')
    expect(await text('tmp/id-numbers')).to.equal('1234:1500 /\n')
    expect(await text('tmp/id-unknown')).to.equal('4321:0 /\n')
    expect(await text('tmp/caps')).to.equal(await fs.readFile(path.join(bundle, 'rootfs', 'tmp', 'caps'), 'utf8'))

    const buildah = JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8'))
    const meta = JSON.parse(await fs.readFile(path.join(box.wafers, 'web', 'meta.json'), 'utf8'))
    expect(meta.image.config.WorkingDir).to.equal(buildah.process.cwd)
    expect(meta.image.config.Cmd).to.deep.equal(buildah.process.args)
    expect(buildah.process.env).to.include.members(meta.image.config.Env)
    expect(buildah.annotations['org.example.name']).to.equal(meta.image.config.Labels['org.example.name'])
  })

  /** `buildah ARGS` on the test's own storage; fails the test when buildah fails. */
  const buildah = async (...args: string[]) => buildahIn(work, ...args)

  /** What buildah's docker-format config of IMAGE holds (`buildah inspect`). */
  const dockerConfig = async (image: string) => JSON.parse(await buildah('inspect', image)).Docker.config

  const ourConfig = async (wafer: string) =>
    JSON.parse(await fs.readFile(path.join(box.wafers, wafer, 'meta.json'), 'utf8')).image.config

  it('keeps legacy LABELs, SHELL, HEALTHCHECK and ONBUILD as buildah does, and runs the triggers', async function () {
    this.timeout(10 * 60 * 1000)
    const base = path.join(work, 'base')
    await makeUmociImage(base, 'base')
    const context = path.join(work, 'context')
    await fs.mkdir(context)
    await fs.writeFile(path.join(context, 'trig.txt'), 'copied by a trigger\n')
    const file = (text: string[]) => fs.writeFile(path.join(context, 'Containerfile'), [...text, ''].join('\n'))
    await file([
      `FROM oci:${base}:base`,
      'LABEL legacy some value   here "q  x"',
      'LABEL legacy2 $UNSET  a\\\\b',
      'SHELL ["/bin/sh", "-ec"]',
      'HEALTHCHECK --interval=30s --timeout=1m30s --retries=3 CMD ["/bin/true"]',
      'ONBUILD RUN echo triggered > /triggered',
      'ONBUILD COPY trig.txt /trig.txt',
    ])
    await buildah('bud', '--isolation', 'chroot', '--format', 'docker', '-t', 'onbase', context)
    const onbase = await box.run(['build', '-t', 'onbase', context])
    expect(onbase.exitCode, onbase.stderr).to.equal(0)
    const theirs = await dockerConfig('onbase')
    const ours = await ourConfig('onbase')
    for (const key of ['Shell', 'Healthcheck', 'OnBuild']) expect(ours[key], key).to.deep.equal(theirs[key])
    expect(ours.Labels.legacy).to.equal('some value   here q  x').and.equal(theirs.Labels.legacy)
    expect(ours.Labels.legacy2).to.equal('  a\\b').and.equal(theirs.Labels.legacy2)

    await file(['FROM onbase', 'RUN echo "$0" > /derived'])
    await buildah('bud', '--isolation', 'chroot', '--format', 'docker', '-t', 'derived', context)
    await buildah('push', 'derived', `oci:${path.join(work, 'out')}:derived`)
    const bundle = path.join(work, 'bundle')
    await execa('umoci', ['unpack', '--image', `${path.join(work, 'out')}:derived`, bundle])
    const build = await box.run(['build', '-t', 'derived', context])
    expect(build.exitCode, build.stderr).to.equal(0)
    expect((await box.run(['stack', 'derived'])).exitCode).to.equal(0)
    const tree = await listing(box.stack('derived'))
    expect(tree).to.deep.equal(await listing(path.join(bundle, 'rootfs')))
    expect(tree.some((line) => line.startsWith('triggered f'))).to.equal(true)
    expect(tree.some((line) => line.startsWith('trig.txt f'))).to.equal(true)
    const derived = await dockerConfig('derived')
    expect((await ourConfig('derived')).OnBuild ?? []).to.deep.equal(derived.OnBuild ?? [])
    expect((await ourConfig('derived')).Shell).to.deep.equal(derived.Shell)
  })

  it('gives a FROM scratch image the default PATH buildah gives it', async function () {
    this.timeout(5 * 60 * 1000)
    const context = path.join(work, 'context')
    await fs.mkdir(context)
    // A store made by nothing else yet (a build from scratch alone does not make it).
    await fs.mkdir(box.wafers, {recursive: true})
    await fs.writeFile(path.join(context, 'Containerfile'), 'FROM scratch\nCOPY Containerfile /\n')
    await buildah('bud', '--isolation', 'chroot', '-t', 'scratchy', context)
    expect((await box.run(['build', '-t', 'scratchy', context])).exitCode).to.equal(0)
    const theirs = JSON.parse(await buildah('inspect', 'scratchy')).OCIv1.config
    expect((await ourConfig('scratchy')).Env)
      .to.deep.equal(theirs.Env)
      .and.have.length(1)
  })

  /**
   * Builds CONTEXT's Containerfile (`lines`) with buildah bud into an oci: layout and with wafers
   * build into wafer NAME, asserts the stacked trees are equal, and returns both configs and roots.
   */
  const sameAsBuildah = async (context: string, name: string, lines: string[], ...flags: string[]) => {
    await fs.writeFile(path.join(context, 'Containerfile'), [...lines, ''].join('\n'))
    const out = path.join(work, `out-${name}`)
    await buildah('bud', '--isolation', 'chroot', ...flags, '-t', `oci:${out}:${name}`, context)
    const bundle = path.join(work, `bundle-${name}`)
    await execa('umoci', ['unpack', '--image', `${out}:${name}`, bundle])
    const build = await box.run(['build', '-t', name, ...flags, context])
    expect(build.exitCode, build.stderr).to.equal(0)
    expect((await box.run(['stack', name])).exitCode).to.equal(0)
    const tree = await listing(box.stack(name))
    expect(tree).to.deep.equal(await listing(path.join(bundle, 'rootfs')))
    return {
      ours: await ourConfig(name),
      root: box.stack(name),
      theirs: JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8')),
      theirsRoot: path.join(bundle, 'rootfs'),
      tree,
    }
  }

  /** A context with busybox and a base image in an oci: layout; returns [context, base image]. */
  const setUp = async () => {
    const base = path.join(work, 'base')
    await makeUmociImage(base, 'base')
    const context = path.join(work, 'context')
    await fs.mkdir(context)
    return [context, `oci:${base}:base`]
  }

  it("leaves DEST of ADD --chown of a local tar root's, as buildah does", async function () {
    this.timeout(10 * 60 * 1000)
    const [context, base] = await setUp()
    const src = path.join(work, 'src')
    await fs.mkdir(path.join(src, 'd'), {recursive: true})
    await fs.writeFile(path.join(src, 'd', 'f'), 'in a tar\n')
    await execa('tar', ['-cf', path.join(context, 'a.tar'), '-C', src, '.'])
    const {tree} = await sameAsBuildah(context, 'chowned', [
      `FROM ${base}`,
      'ADD --chown=1000:1000 a.tar /t/',
      'ADD --chown=1000:1000 a.tar /u/v/',
    ])
    expect(tree.find((line) => line.startsWith('t d'))).to.include(' 0:0')
    expect(tree.find((line) => line.startsWith('u d'))).to.include(' 1000:1000')
  })

  it('runs USER with the groups of /etc/group and without making a missing home, as buildah does', async function () {
    this.timeout(10 * 60 * 1000)
    const [context, base] = await setUp()
    // A getent for nspawn's --user to look users up with (the base has none): what nspawn asks.
    await fs.writeFile(
      path.join(context, 'getent'),
      [
        '#!/bin/sh',
        'case "$1" in',
        'passwd|group) /bin/busybox grep "^$2:" "/etc/$1" ;;',
        'initgroups) echo "$2 $(/bin/busybox id -G "$2")" ;;',
        '*) exit 2 ;;',
        'esac',
        '',
      ].join('\n'),
      {mode: 0o755},
    )
    await fs.chmod(path.join(context, 'getent'), 0o755)
    const ids = (who: string) =>
      `RUN /bin/busybox id -G | /bin/busybox tr " " "\\n" | /bin/busybox sort -n > /tmp/groups-${who}; echo "$HOME" > /tmp/home-${who}`
    const {root, theirsRoot} = await sameAsBuildah(context, 'users', [
      `FROM ${base}`,
      'RUN echo app:x:1500:1500::/home/app:/bin/sh >> /etc/passwd && echo app:x:1500: >> /etc/group && \\',
      '    echo extra:x:77:app,owner >> /etc/group && echo more:x:78:app >> /etc/group',
      // No getent (busybox): the groups come from /etc/group all the same.
      'USER app',
      ids('app'),
      'USER owner',
      ids('owner'),
      'USER root',
      'COPY getent /usr/bin/getent',
      // With getent: a user whose home is missing, and one whose home is there.
      'USER app',
      ids('app-getent'),
      'USER owner',
      ids('owner-getent'),
    ])
    const read = async (dir: string, file: string) => fs.readFile(path.join(dir, 'tmp', file), 'utf8')
    for (const who of ['app', 'owner', 'app-getent', 'owner-getent']) {
      expect(await read(root, `groups-${who}`), who).to.equal(await read(theirsRoot, `groups-${who}`))
      expect(await read(root, `home-${who}`), who).to.equal(await read(theirsRoot, `home-${who}`))
    }

    expect(await read(root, 'groups-app')).to.equal('77\n78\n1500\n')
    expect(await read(root, 'groups-owner-getent')).to.equal('77\n5678\n')
  })

  it('takes --platform and FROM --platform from a two-platform index, and --target, as buildah does', async function () {
    this.timeout(10 * 60 * 1000)
    const context = path.join(work, 'context')
    await fs.mkdir(context)
    for (const arch of ['amd64', 'arm64']) {
      await fs.writeFile(path.join(context, `${arch}.txt`), `${arch}\n`)
      await fs.writeFile(path.join(context, `${arch}.containerfile`), `FROM scratch\nCOPY ${arch}.txt /\n`)
      await buildah(
        'bud',
        '--platform',
        `linux/${arch}`,
        '-f',
        path.join(context, `${arch}.containerfile`),
        '-t',
        `plat-${arch}`,
        context,
      )
    }

    await buildah('manifest', 'create', 'multi')
    for (const arch of ['amd64', 'arm64']) {
      await buildah('manifest', 'add', 'multi', `containers-storage:localhost/plat-${arch}:latest`)
    }

    const layout = path.join(work, 'multi')
    await buildah('manifest', 'push', '--all', 'multi', `oci:${layout}:multi`)
    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8'))
    const inner = JSON.parse(
      await fs.readFile(path.join(layout, 'blobs', ...index.manifests[0].digest.split(':')), 'utf8'),
    )
    expect(
      inner.manifests.map((m: {platform: {architecture: string}}) => m.platform.architecture).sort(),
    ).to.deep.equal(['amd64', 'arm64'])
    await fs.writeFile(path.join(context, 'extra.txt'), 'extra\n')
    const arch = async (name: string) =>
      JSON.parse(
        (await execa('skopeo', ['inspect', '--config', `oci:${path.join(work, `out-${name}`)}:${name}`])).stdout,
      ).architecture

    const staged = await sameAsBuildah(
      context,
      'staged',
      [
        `FROM --platform=linux/arm64 oci:${layout}:multi AS base`,
        'COPY extra.txt /',
        'FROM base AS final',
        'COPY amd64.txt /copied.txt',
        'FROM scratch',
        'COPY Containerfile /',
      ],
      '--target',
      'final',
    )
    expect(staged.tree.map((line) => line.split(' ')[0])).to.deep.equal(['arm64.txt', 'copied.txt', 'extra.txt'])
    expect(await arch('staged')).to.equal('arm64')
    expect(
      JSON.parse(await fs.readFile(path.join(box.wafers, 'staged', 'meta.json'), 'utf8')).image.architecture,
    ).to.equal('arm64')

    const flagged = await sameAsBuildah(
      context,
      'flagged',
      [`FROM oci:${layout}:multi`, 'COPY extra.txt /'],
      '--platform',
      'linux/arm64',
    )
    expect(flagged.tree.map((line) => line.split(' ')[0])).to.deep.equal(['arm64.txt', 'extra.txt'])
    expect(await arch('flagged')).to.equal('arm64')
  })

  it('copies from an image COPY --from names, pulled as FROM pulls it, as buildah does', async function () {
    this.timeout(10 * 60 * 1000)
    const [context, base] = await setUp()
    const {tree} = await sameAsBuildah(context, 'copied', [
      'FROM scratch',
      `COPY --from=${base} /etc/passwd /data/ /from-image/`,
      `COPY --from=${base} /usr/bin/suid /suid`,
    ])
    expect(tree.some((line) => line.startsWith('from-image/passwd f'))).to.equal(true)
    expect(tree.some((line) => line.startsWith('from-image/owned f 0640 1234:5678'))).to.equal(true)
  })

  it('downloads ADD of a URL as buildah does: not unpacked, mode 0600, the mtime Last-Modified gives', async function () {
    this.timeout(10 * 60 * 1000)
    const gz = (await execa('gzip', ['-c'], {encoding: 'buffer', input: 'payload\n'})).stdout
    const files: Record<string, Buffer> = {'/file.txt': Buffer.from('payload\n'), '/file.txt.gz': Buffer.from(gz)}
    const server = http.createServer((request, response) => {
      const body = files[request.url ?? '']
      if (body === undefined) {
        response.writeHead(404).end()
        return
      }

      response
        .writeHead(200, {'Content-Length': body.length, 'Last-Modified': 'Thu, 02 Jan 2020 03:04:05 GMT'})
        .end(body)
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    try {
      const context = path.join(work, 'context')
      await fs.mkdir(context)
      await fs.mkdir(box.wafers, {recursive: true})
      const {tree} = await sameAsBuildah(context, 'fetched', [
        'FROM scratch',
        `ADD ${url}/file.txt ${url}/file.txt.gz /d/`,
        `ADD --chown=1:2 ${url}/file.txt /named`,
        `ADD --chmod=0644 ${url}/file.txt /d/sub/`,
      ])
      expect(tree.find((line) => line.startsWith('d/file.txt.gz '))).to.include(' f 0600 0:0 ')
      expect(tree.find((line) => line.startsWith('named '))).to.include(' f 0600 1:2 ')
      const stat = await fs.stat(path.join(box.stack('fetched'), 'named'))
      expect(stat.mtime.toISOString()).to.equal('2020-01-02T03:04:05.000Z')
      const theirs = await fs.stat(path.join(work, 'bundle-fetched', 'rootfs', 'named'))
      expect(theirs.mtime.getTime()).to.equal(stat.mtime.getTime())
    } finally {
      server.close()
    }
  })

  it('mounts RUN --mount caches, binds and secrets as buildah does, leaving no mount point and no secret', async function () {
    this.timeout(10 * 60 * 1000)
    const [context, base] = await setUp()
    await fs.mkdir(path.join(context, 'sub'))
    await fs.writeFile(path.join(context, 'sub', 'f'), 'from the context\n')
    const secret = path.join(work, 'secret')
    await fs.writeFile(path.join(secret), 'never-in-a-layer-4711\n')
    const lines = [
      `FROM ${base} AS other`,
      'RUN echo from a stage > /staged',
      `FROM ${base}`,
      // buildah keeps its caches for the whole machine (/var/tmp): an id of this test's own.
      `RUN --mount=type=cache,id=${path.basename(work)},target=/var/cache/x sh -c 'echo c >> /var/cache/x/n; cat /var/cache/x/n > /cache-seen'`,
      'RUN --mount=type=bind,source=sub,target=/mnt/ctx --mount=type=bind,from=other,source=/staged,target=/mnt/staged \\',
      '    cat /mnt/ctx/f /mnt/staged > /bind-seen',
      // What the RUN saw, as a digest: the layer must not hold the secret itself.
      'RUN --mount=type=secret,id=tok /bin/busybox sha256sum /run/secrets/tok > /secret-seen',
      'RUN --mount=type=secret,id=tok,target=/etc/tok /bin/busybox sha256sum /etc/tok > /secret2-seen',
    ]
    const {root, tree} = await sameAsBuildah(context, 'mounted', lines, '--secret', `id=tok,src=${secret}`)
    expect(await fs.readFile(path.join(root, 'bind-seen'), 'utf8')).to.equal('from the context\nfrom a stage\n')
    expect(await fs.readFile(path.join(root, 'cache-seen'), 'utf8')).to.equal('c\n')
    const digest = createHash('sha256').update('never-in-a-layer-4711\n').digest('hex')
    expect(await fs.readFile(path.join(root, 'secret2-seen'), 'utf8')).to.equal(`${digest}  /etc/tok\n`)
    expect(tree.some((line) => line.startsWith('mnt/ctx'))).to.equal(false)
    // The cache outlives the build: a rebuild of the step sees what the last one left.
    expect((await box.run(['unstack', 'mounted'])).exitCode).to.equal(0)
    const again = await box.run(['build', '-t', 'mounted', '--no-cache', '--secret', `id=tok,src=${secret}`, context])
    expect(again.exitCode, again.stderr).to.equal(0)
    expect((await box.run(['stack', 'mounted'])).exitCode).to.equal(0)
    expect(await fs.readFile(path.join(root, 'cache-seen'), 'utf8')).to.equal('c\nc\n')
    // The secret is nowhere in the store: no layer, no cache key, no meta.
    const grep = await execa('grep', ['-r', '-l', 'never-in-a-layer-4711', box.wafers], {reject: false})
    expect(grep.stdout).to.equal('')
    expect(grep.exitCode).to.equal(1)
  })
})
