import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {
  buildWeb,
  busyboxBase,
  filesOf,
  hasStackTrace,
  nspawnIn,
  said,
  Sandbox,
  snapshot,
  useSandbox,
} from '../helpers/sandbox.js'

describe('wafers build: a Containerfile becomes a cached chain of wafers (real nspawn, real overlays)', function () {
  let box: Sandbox
  let context: string
  useSandbox((created) => {
    box = created
  })

  beforeEach(async function () {
    this.timeout(120_000)
    context = await busyboxBase(box)
    await fs.mkdir(path.join(context, 'site', 'deep'), {recursive: true})
    await fs.writeFile(path.join(context, 'index.html'), '<h1>hi</h1>\n')
    await fs.writeFile(path.join(context, 'site', 'a.css'), 'a{}\n')
    await fs.writeFile(path.join(context, 'site', 'deep', 'b.css'), 'b{}\n')
    await fs.writeFile(path.join(context, 'site', 'notes.log'), 'left out\n')
    await fs.writeFile(path.join(context, 'secret.key'), 'never copied\n')
    await fs.writeFile(path.join(context, '.dockerignore'), '*.key\n**/*.log\n')
  })

  const build = async (file: string, ...args: string[]) => buildWeb(box, context, file, ...args)

  const FILE = [
    '# syntax=docker/dockerfile:1',
    'FROM bb',
    'ARG FLAVOUR=plain',
    'ENV GREETING="hello there" \\',
    '    HOME_DIR=/srv',
    'WORKDIR /srv/www',
    'COPY index.html ./',
    'COPY site/ ./site/',
    'RUN echo "$GREETING $FLAVOUR $(pwd)" > made.txt && \\',
    '    # a comment in a continuation',
    '    mkdir -p /var/lib/app',
    'RUN ["/bin/sh", "-c", "cat index.html >> made.txt"]',
    'LABEL org.example.flavour=$FLAVOUR',
    'EXPOSE 8080',
    'CMD ["httpd", "-f"]',
    '',
  ].join('\n')

  it('makes one wafer per COPY and RUN, with only what the step changed, and NAME with the image config', async function () {
    const {json, run} = await build(FILE, '--build-arg', 'FLAVOUR=spicy')
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(json.name).to.equal('web')
    expect(json.steps.map((step) => step.instruction.split(' ')[0])).to.deep.equal([
      'FROM',
      'ARG',
      'ENV',
      'WORKDIR',
      'COPY',
      'COPY',
      'RUN',
      'RUN',
      'LABEL',
      'EXPOSE',
      'CMD', // prettier-ignore
    ])
    const made = json.steps.filter((step) => step.wafer !== null && step.instruction !== 'FROM bb')
    expect(made).to.have.length(4)
    expect(json.steps.filter((step) => step.wafer === null).map((s) => s.instruction.split(' ')[0])).to.deep.equal([
      'ARG',
      'ENV',
      'WORKDIR',
      'LABEL',
      'EXPOSE',
      'CMD', // prettier-ignore
    ])
    const [copyIndex, copySite, run1, run2] = made.map((step) => step.wafer as string)
    for (const wafer of [copyIndex, copySite, run1, run2]) expect(wafer).to.match(/^build-[\da-f]{40}$/)

    // Each step's wafer holds exactly its change: no nspawn leftovers (resolv.conf, lib, ...).
    expect(await filesOf(box, copyIndex)).to.deep.equal(['srv', 'srv/www', 'srv/www/index.html'])
    expect(await filesOf(box, copySite)).to.deep.equal([
      'srv',
      'srv/www',
      'srv/www/site',
      'srv/www/site/a.css',
      'srv/www/site/deep',
      'srv/www/site/deep/b.css', // prettier-ignore
    ])
    expect(await filesOf(box, run1)).to.deep.equal([
      'srv',
      'srv/www',
      'srv/www/made.txt',
      'var',
      'var/lib',
      'var/lib/app', // prettier-ignore
    ])
    expect(await filesOf(box, run2)).to.deep.equal(['srv', 'srv/www', 'srv/www/made.txt'])
    expect(await fs.readFile(box.data(run2, 'srv', 'www', 'made.txt'), 'utf8')).to.equal(
      'hello there spicy /srv/www\n<h1>hi</h1>\n',
    )
    expect((await fs.stat(box.data(copyIndex, 'srv', 'www', 'index.html'))).uid).to.equal(0)
    expect(await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8')).to.equal(`${run2}\n`)
    expect(await fs.readdir(box.data('web'))).to.deep.equal([])
    expect(await fs.readFile(path.join(box.wafers, run1, 'parent'), 'utf8')).to.equal(`${copySite}\n`)

    const meta = JSON.parse(await fs.readFile(path.join(box.wafers, 'web', 'meta.json'), 'utf8'))
    expect(meta.image.config).to.deep.equal({
      Cmd: ['httpd', '-f'],
      Env: ['GREETING=hello there', 'HOME_DIR=/srv'],
      ExposedPorts: {'8080/tcp': {}},
      Labels: {'org.example.flavour': 'spicy'},
      WorkingDir: '/srv/www',
    })
    expect(meta.image.history.map((h: {empty_layer?: boolean}) => Boolean(h.empty_layer))).to.deep.equal([
      true,
      true,
      true,
      false,
      false,
      false,
      false,
      true,
      true,
      true, // prettier-ignore
    ])
    const stepMeta = JSON.parse(await fs.readFile(path.join(box.wafers, run1, 'meta.json'), 'utf8'))
    expect(stepMeta.build.instruction).to.match(/^RUN echo/)
    expect(run1).to.equal(`build-${stepMeta.build.key.slice(0, 40)}`)

    // The result stacks and runs.
    const stack = await box.run(['stack', 'web'])
    expect(stack.exitCode, stack.stderr).to.equal(0)
    const cat = await nspawnIn(box.stack('web'), ['/bin/cat', '/srv/www/made.txt', '/srv/www/site/deep/b.css'])
    expect(cat.stdout.replaceAll('\r', '')).to.equal('hello there spicy /srv/www\n<h1>hi</h1>\nb{}')
    // .dockerignore kept the key and the log out.
    expect(await fs.readdir(box.stack('web', 'srv', 'www', 'site'))).to.deep.equal(['a.css', 'deep'])
  })

  it('rebuilds nothing when nothing changed, and from a changed COPY source on', async function () {
    const first = await build(FILE)
    expect(first.run.exitCode, first.run.stderr).to.equal(0)
    expect(first.json.steps.filter((s) => s.wafer !== null && !s.cached)).to.have.length(4)
    const before = await snapshot(box.wafers)

    const again = await build(FILE)
    expect(again.run.exitCode, again.run.stderr).to.equal(0)
    expect(again.json.steps.every((step) => step.cached)).to.equal(true)
    expect(again.json.steps.map((step) => step.wafer)).to.deep.equal(first.json.steps.map((step) => step.wafer))
    expect(await snapshot(box.wafers), 'an unchanged rebuild changes nothing on disk').to.deep.equal(before)

    // A file .dockerignore leaves out changes nothing either.
    await fs.writeFile(path.join(context, 'site', 'notes.log'), 'still left out, but changed\n')
    expect((await build(FILE)).json.steps.every((step) => step.cached)).to.equal(true)

    await fs.writeFile(path.join(context, 'site', 'a.css'), 'a{color:red}\n')
    const changed = await build(FILE)
    expect(changed.run.exitCode, changed.run.stderr).to.equal(0)
    const cached = changed.json.steps.map(
      (step) => `${step.instruction.split(' ').slice(0, 2).join(' ')}:${step.cached}`,
    )
    expect(cached).to.deep.equal([
      'FROM bb:true',
      'ARG FLAVOUR=plain:true',
      'ENV GREETING="hello:true',
      'WORKDIR /srv/www:true',
      'COPY index.html:true',
      'COPY site/:false',
      'RUN echo:false',
      'RUN ["/bin/sh",:false',
      'LABEL org.example.flavour=$FLAVOUR:false',
      'EXPOSE 8080:false',
      'CMD ["httpd",:false',
    ])
    expect(changed.json.steps[4].wafer).to.equal(first.json.steps[4].wafer)
    expect(changed.json.steps[5].wafer).to.not.equal(first.json.steps[5].wafer)
    // web was re-pointed at the new last step.
    expect(await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8')).to.equal(
      `${changed.json.steps[7].wafer}\n`,
    )

    // --no-cache runs every step again.
    const fresh = await build(FILE, '--no-cache')
    expect(fresh.run.exitCode, fresh.run.stderr).to.equal(0)
    const layers = fresh.json.steps.filter((step) => step.wafer !== null && !step.instruction.startsWith('FROM'))
    expect(layers.every((step) => !step.cached)).to.equal(true)
    expect(layers.map((step) => step.wafer)).to.not.include.members([changed.json.steps[4].wafer])

    // ... and what it made is what the cache holds from then on: a plain build takes the fresh
    // wafers and leaves NAME on them, not on the stale ones.
    const after = await build(FILE)
    expect(after.run.exitCode, after.run.stderr).to.equal(0)
    expect(after.json.steps.every((step) => step.cached)).to.equal(true)
    expect(after.json.steps.map((step) => step.wafer)).to.deep.equal(fresh.json.steps.map((step) => step.wafer))
    expect(await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8')).to.equal(`${fresh.json.steps[7].wafer}\n`)
  })

  it('stops at a failing RUN, naming it and its exit code, with no wafer for it and the steps before cached', async function () {
    const file = 'FROM bb\nCOPY index.html /\nRUN echo about to fail && exit 7\nRUN touch /never\n'
    const first = await build(file)
    expect(first.run.exitCode).to.equal(1)
    expect(said(first.run.stderr)).to.include(
      'step 3 (RUN echo about to fail && exit 7) failed with exit code 7; no wafer was made for it.',
    )
    expect(hasStackTrace(first.run.stderr), first.run.stderr).to.equal(false)
    const wafers = (await fs.readdir(box.wafers)).filter((entry) => entry !== '.links').sort()
    expect(wafers).to.have.length(2) // bb and the COPY step: no half-made wafer, no staging dir, no web
    expect(wafers).to.include('bb')
    expect(await box.mountOf('web')).to.equal(undefined)

    const plain = await box.run(['build', '-t', 'web', context])
    expect(plain.exitCode).to.equal(1)
    expect(plain.stderr).to.include('about to fail')
    expect(plain.stderr).to.match(/\[2\/4\] COPY index.html \/ \(cached\)/)
    expect((await fs.readdir(box.wafers)).filter((entry) => entry !== '.links').sort()).to.deep.equal(wafers)
  })

  it('stops a RUN that says its file system is full, in one sentence, even when it would go on', async function () {
    this.timeout(60_000) // the RUN would sleep for ten minutes: only being stopped ends it in time
    const {run} = await build('FROM bb\nRUN echo "cp: No space left on device" && sleep 600\n')
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include('the RUN ran out of space: no space is left on the file system it writes to.')
    expect((await fs.readdir(box.wafers)).filter((entry) => entry !== '.links')).to.deep.equal(['bb'])
  })

  it('refuses a RUN as a user the image does not list, naming the step and the user, with no wafer for it', async function () {
    const first = await build('FROM bb\nUSER ghost\nRUN touch /never\n')
    expect(first.run.exitCode).to.equal(1)
    expect(said(first.run.stderr)).to.include(
      "step 3 (RUN touch /never): USER ghost: there is no user ghost in the image's /etc/passwd.",
    )
    expect(hasStackTrace(first.run.stderr), first.run.stderr).to.equal(false)
    expect((await fs.readdir(box.wafers)).filter((entry) => entry !== '.links')).to.deep.equal(['bb'])
  })

  it('refuses what it does not support before running any step, naming the line, and changes nothing', async function () {
    const before = await snapshot(box.wafers)
    const mount = await build('FROM bb\nRUN touch /x\nRUN --mount=type=tmpfs,target=/c true\n')
    expect(mount.run.exitCode).to.equal(1)
    expect(said(mount.run.stderr)).to.include(
      'line 3: RUN --mount=type=tmpfs,target=/c: wafers mounts type=bind, type=cache and type=secret, not type=tmpfs.',
    )
    // As buildah 1.28 refuses it.
    const checksum = await build('FROM bb\nRUN touch /x\nADD --checksum=sha256:00 http://127.0.0.1:9/x /x\n')
    expect(said(checksum.run.stderr)).to.include('line 3: ADD --checksum is not supported')
    const unknown = await build('FROM bb\nRUN touch /x\nFROB it\n')
    expect(said(unknown.run.stderr)).to.include('line 3: unknown instruction FROB.')
    const missing = await box.run(['build', '-t', 'web', '-f', path.join(context, 'Nothing'), context])
    expect(said(missing.stderr)).to.include(`there is no file ${path.join(context, 'Nothing')}.`)
    expect(hasStackTrace(missing.stderr)).to.equal(false)
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  it('stops the RUN under way on Ctrl-C, leaving no wafer and nothing mounted for it', async function () {
    await fs.writeFile(
      path.join(context, 'Containerfile'),
      'FROM bb\nCOPY index.html /\nRUN echo started && sleep 60\n',
    )
    const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))
    const child = execa(process.execPath, [bin, 'build', '-t', 'web', context], {
      all: true,
      env: box.env,
      reject: false,
      stdin: 'ignore',
    })
    let output = ''
    await new Promise<void>((resolve) => {
      child.all?.on('data', (chunk: Buffer) => {
        output += chunk.toString()
        if (output.includes('started')) resolve()
      })
    })
    const started = Date.now()
    child.kill('SIGINT')
    const result = await child
    expect(Date.now() - started).to.be.below(20_000)
    expect(result.exitCode, result.all).to.equal(130)
    expect(said(String(result.all))).to.include(
      'interrupted during step 3 (RUN echo started && sleep 60); no wafer was made for it.',
    )
    const left = (await fs.readdir(box.wafers)).filter((entry) => entry !== '.links')
    expect(left).to.have.length(2) // bb and the COPY step
    const mounts = (await fs.readFile('/proc/self/mountinfo', 'utf8'))
      .split('\n')
      .filter((line) => line.includes(box.wafers))
    expect(mounts).to.deep.equal([])
  })

  it('runs a RUN on a stack too deep for nspawn to mount by itself, each layer where it belongs', async function () {
    // 60 wafers with 64-character names: their full paths take far more than the page of mount
    // options nspawn could pass; the build then mounts the step itself, through the short links.
    let parent = 'bb'
    for (let i = 0; i < 60; i++) {
      const name = `deep-${String(i).padStart(2, '0')}-${'x'.repeat(56)}`
      await fs.mkdir(path.join(box.wafers, name, 'data', 'layers'), {recursive: true})
      await fs.mkdir(path.join(box.wafers, name, 'work'))
      await fs.writeFile(path.join(box.wafers, name, 'data', 'layers', String(i)), `${i}\n`)
      await fs.writeFile(path.join(box.wafers, name, 'parent'), `${parent}\n`)
      parent = name
    }

    const {json, run} = await build(`FROM ${parent}\nRUN ls /layers | wc -l > /count\n`)
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(await filesOf(box, json.steps[1].wafer as string)).to.deep.equal(['count'])
    expect((await fs.readFile(box.data(json.steps[1].wafer as string, 'count'), 'utf8')).trim()).to.equal('60')
  })

  it('never lets nspawn files into a layer, even where the stack lacks the paths nspawn makes', async function () {
    // busybox has no lib and no etc/resolv.conf: nspawn makes a lib link and a resolv.conf mount point.
    const {json, run} = await build('FROM bb\nRUN cat /etc/resolv.conf > /dev/null && touch /made\nRUN true\n')
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(await filesOf(box, json.steps[1].wafer as string)).to.deep.equal(['made'])
    // A step that changed nothing is an empty wafer, recorded as an empty layer in the history.
    expect(await filesOf(box, json.steps[2].wafer as string)).to.deep.equal([])
    const meta = JSON.parse(await fs.readFile(path.join(box.wafers, 'web', 'meta.json'), 'utf8'))
    expect(meta.image.history).to.deep.equal([
      {created_by: 'RUN cat /etc/resolv.conf > /dev/null && touch /made'},
      {created_by: 'RUN true', empty_layer: true},
    ])
    const step = JSON.parse(
      await fs.readFile(path.join(box.wafers, json.steps[2].wafer as string, 'meta.json'), 'utf8'),
    )
    expect(step.build.history).to.deep.equal([{created_by: 'RUN true', empty_layer: true}])
  })

  it('COPY takes globs, --chown and --chmod, never reads outside the context, and ADD unpacks tarballs', async function () {
    await fs.symlink('/etc/passwd', path.join(context, 'escape'))
    await fs.symlink('../../etc', path.join(context, 'site', 'up'))
    await execa('tar', ['-czf', path.join(context, 'bundle.tar.gz'), '-C', path.join(context, 'site'), '.'])
    const file = [
      'FROM bb',
      "RUN echo 'app:x:1234:1234::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1234:' >> /etc/group",
      'COPY --chown=app --chmod=600 site/*.css /conf/',
      'ADD bundle.tar.gz /unpacked/',
      'COPY site /copied/',
      '',
    ].join('\n')
    const {json, run} = await build(file)
    expect(run.exitCode, run.stderr).to.equal(0)
    const [, , chown, add, copied] = json.steps.map((step) => step.wafer as string)
    const css = await fs.stat(box.data(chown, 'conf', 'a.css'))
    expect([css.uid, css.gid, css.mode & 0o7777]).to.deep.equal([1234, 1234, 0o600])
    expect(await filesOf(box, chown)).to.deep.equal(['conf', 'conf/a.css'])
    expect(await fs.readFile(box.data(add, 'unpacked', 'deep', 'b.css'), 'utf8')).to.equal('b{}\n')
    // A link inside a copied directory is copied as a link, never followed.
    expect(await fs.readlink(box.data(copied, 'copied', 'up'))).to.equal('../../etc')

    // A named source that links out of the context is resolved inside it, where there is nothing.
    const before = await snapshot(box.wafers)
    const escape = await build('FROM bb\nCOPY escape /escape-copy\n')
    expect(escape.run.exitCode).to.equal(1)
    expect(said(escape.run.stderr)).to.include('escape is not in the build context')
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  it('builds multi-stage files, COPY --from a stage, and refuses re-pointing a NAME with files or stacked', async function () {
    const file = [
      'FROM bb AS builder',
      'RUN mkdir /out && echo built > /out/artifact',
      'FROM scratch',
      'COPY --from=builder /out/artifact /artifact',
      'COPY --from=builder /bin/busybox /bin/busybox',
      '',
    ].join('\n')
    const {json, run} = await build(file)
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8')).to.equal(`${json.steps.at(-1)?.wafer}\n`)
    const first = json.steps[3].wafer as string
    expect(await fs.readFile(path.join(box.wafers, first, 'parent'), 'utf8').catch(() => 'none')).to.equal('none')
    expect(await filesOf(box, first)).to.deep.equal(['artifact'])

    // web stacked: refused, nothing changed.
    expect((await box.run(['stack', 'web'])).exitCode).to.equal(0)
    await fs.writeFile(path.join(context, 'Containerfile'), file.replace('built', 'rebuilt'))
    const before = await snapshot(box.wafers)
    const stacked = await box.run(['build', '-t', 'web', context])
    expect(stacked.exitCode).to.equal(1)
    expect(said(stacked.stderr)).to.include(
      `wafer web is stacked at ${box.stack('web')}; unstack it before rebuilding it.`,
    )
    expect((await box.run(['unstack', 'web'])).exitCode).to.equal(0)
    // web with files of its own: refused.
    await fs.writeFile(box.data('web', 'mine'), 'x\n')
    const own = await box.run(['build', '-t', 'web', context])
    expect(own.exitCode).to.equal(1)
    expect(said(own.stderr)).to.include('wafer web holds changes of its own (mine)')
    expect(await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8')).to.equal(`${json.steps.at(-1)?.wafer}\n`)
    void before
  })

  it("fires the plugins' stack hooks around each step it runs", async function () {
    const fixture = fileURLToPath(new URL('../fixtures/plugin-alpha', import.meta.url))
    expect((await box.run(['plugins', 'link', '--no-install', fixture])).exitCode).to.equal(0)
    const log = path.join(box.root, 'hooks.log')
    await fs.writeFile(path.join(context, 'Containerfile'), 'FROM bb\nRUN touch /x\n')
    const run = await box.run(['build', '-t', 'web', context], {WAFERS_TEST_LOG: log})
    expect(run.exitCode, run.stderr).to.equal(0)
    const events = (await fs.readFile(log, 'utf8'))
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line).event)
    expect(events).to.deep.equal(['prestack', 'poststack', 'preunstack', 'postunstack'])
  })
})
