import {expect} from 'chai'
import {execa} from 'execa'
import {randomBytes} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'

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

const CONTAINERFILE = (base: string) =>
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
    await fs.writeFile(path.join(context, 'Containerfile'), CONTAINERFILE(base))

    const storage = [
      '--root',
      path.join(work, 'root'),
      '--runroot',
      path.join(work, 'runroot'),
      '--storage-driver',
      'vfs',
    ]
    const out = path.join(work, 'out')
    const bud = await execa(
      'buildah',
      [
        ...storage,
        'bud',
        '--isolation',
        'chroot',
        '-t',
        `oci:${out}:built`,
        '-f',
        path.join(context, 'Containerfile'),
        context,
      ],
      {reject: false, stdin: 'ignore'},
    )
    expect(bud.exitCode, `${bud.stdout}\n${bud.stderr}`).to.equal(0)
    const bundle = path.join(work, 'bundle')
    await execa('umoci', ['unpack', '--image', `${out}:built`, bundle])

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
})
