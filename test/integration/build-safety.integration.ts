import {expect} from 'chai'
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {buildWeb, busyboxBase, filesOf, hasStackTrace, said, Sandbox, snapshot, useSandbox} from '../helpers/sandbox.js'

/** The store as a tree, without the links directory the first mount makes. */
async function storeTree(box: Sandbox): Promise<string[]> {
  return (await snapshot(box.wafers)).filter((line) => !line.startsWith('.links'))
}

describe('wafers build: hostile images and contexts never reach the host (real nspawn, real overlays)', function () {
  let box: Sandbox
  let context: string
  /** A directory on the host, outside the store, that images link to. */
  let victim: string
  useSandbox((created) => {
    box = created
  })

  beforeEach(async function () {
    this.timeout(120_000)
    context = await busyboxBase(box)
    victim = path.join(box.root, 'victim')
    await fs.mkdir(victim, {recursive: true})
  })

  const build = async (file: string, ...args: string[]) => buildWeb(box, context, file, ...args)

  /**
   * Starts a build whose RUN says it has begun, sleeps 4 s and then marks /late-marker; resolves
   * once it has begun. Output goes to a file, as to a terminal: no pipe ties nspawn's life to the test.
   */
  const buildUntilBegun = async () => {
    await fs.writeFile(
      path.join(context, 'Containerfile'),
      'FROM bb\nRUN echo be""gun && sleep 4 && touch /late-marker\n',
    )
    const log = path.join(box.root, 'build.log')
    const child = execa(
      process.execPath,
      [fileURLToPath(new URL('../../bin/run.js', import.meta.url)), 'build', '-t', 'web', context],
      {
        env: box.env,
        reject: false,
        stderr: {append: true, file: log},
        stdin: 'ignore',
        stdout: {append: true, file: log},
      },
    )
    await fs.writeFile(log, '', {flag: 'a'})
    for (let tries = 0; !(await fs.readFile(log, 'utf8')).includes('begun'); tries++) {
      expect(tries).to.be.below(300)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }

    // In an object: the subprocess is a promise, which returning it would wait for.
    return {child}
  }

  it('ADD never unpacks through a link the image points out to the host: refused in one sentence, the host untouched', async function () {
    const tree = path.join(box.root, 'tree')
    await fs.mkdir(path.join(tree, 'x'), {recursive: true})
    await fs.writeFile(path.join(tree, 'x', 'pwned'), 'owned\n')
    // Only the file, no entry for x itself: a second reader would write through whatever x is.
    await execa('tar', ['-cf', path.join(context, 'evil.tar'), '-C', tree, 'x/pwned'])
    const file = ['FROM bb', `RUN mkdir -p /data && ln -s ${victim} /data/x`, 'ADD evil.tar /data/', ''].join('\n')
    const {run} = await build(file)
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include('evil.tar was refused: its entry "x/pwned" lands through "x"')
    expect(await fs.readdir(victim)).to.deep.equal([])
  })

  it('ADD of a tarball with a name out of the image names the member, and makes nothing', async function () {
    await fs.writeFile(path.join(box.root, 'f'), 'x\n')
    await execa('tar', ['-cPf', path.join(context, 'up.tar'), '-C', box.root, '--transform', 's,^,../,', 'f'])
    const before = await storeTree(box)
    const {run} = await build('FROM bb\nADD up.tar /data/\n')
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include('up.tar was refused: its entry "../f"')
    expect(said(run.stderr)).not.to.include('previous errors')
    expect(await storeTree(box)).to.deep.equal(before)
  })

  it('keeps what a RUN made at the paths nspawn mounts on, and deletes nothing through links a RUN planted', async function () {
    await fs.mkdir(path.join(victim, 'journal'))
    const {json, run} = await build(`FROM bb\nRUN rm -rf /var/log && mkdir -p /var && ln -s ${victim} /var/log\n`)
    expect(run.exitCode, run.stderr).to.equal(0)
    // The host directory the image links to is untouched.
    expect(await fs.readdir(victim)).to.deep.equal(['journal'])
    expect((await fs.stat(path.join(victim, 'journal'))).isDirectory()).to.equal(true)
    expect(await fs.readlink(box.data(json.steps[1].wafer as string, 'var', 'log'))).to.equal(victim)

    const file = 'FROM bb\nRUN touch /etc/hostname /etc/machine-id && mkdir -p /var/log/journal /lib64\nRUN true\n'
    const second = await build(file)
    expect(second.run.exitCode, second.run.stderr).to.equal(0)
    const [, touched, nothing] = second.json.steps.map((step) => step.wafer as string)
    // What the RUN made is all in its layer, though nspawn mounts on some of those paths.
    const files = await filesOf(box, touched)
    expect(files).to.include.members(['etc/hostname', 'etc/machine-id', 'lib64', 'var/log/journal'])
    // And nspawn's own mount points are in no layer.
    expect(await filesOf(box, nothing)).to.deep.equal([])
  })

  it("RUN sees the image's /tmp, not a tmpfs: what COPY put there runs, what RUN writes there stays", async function () {
    await fs.writeFile(path.join(context, 'inst.sh'), 'echo installed > /opt-made\n')
    const {json, run} = await build('FROM bb\nCOPY inst.sh /tmp/\nRUN sh /tmp/inst.sh; echo keep > /tmp/keep\n')
    expect(run.exitCode, run.stderr).to.equal(0)
    const made = json.steps[2].wafer as string
    expect(await fs.readFile(box.data(made, 'opt-made'), 'utf8')).to.equal('installed\n')
    expect(await fs.readFile(box.data(made, 'tmp', 'keep'), 'utf8')).to.equal('keep\n')
  })

  it('COPY of a link keeps the name as written', async function () {
    await fs.writeFile(path.join(context, 'real1'), 'real\n')
    await fs.symlink('real1', path.join(context, 'link'))
    const {json, run} = await build('FROM bb\nCOPY link /d/\n')
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(await filesOf(box, json.steps[1].wafer as string)).to.deep.equal(['d', 'd/link'])
  })

  it('a file name cannot forge the cache key of a COPY', async function () {
    // site/a and site/b, then one file whose name spells both entries as the old key lines did.
    const site = path.join(context, 'site')
    await fs.mkdir(site)
    await fs.writeFile(path.join(site, 'a'), 'X')
    await fs.writeFile(path.join(site, 'b'), 'Y')
    await fs.chmod(path.join(site, 'a'), 0o644)
    await fs.chmod(path.join(site, 'b'), 0o644)
    const first = await build('FROM bb\nCOPY site/ /s/\n')
    expect(first.run.exitCode, first.run.stderr).to.equal(0)
    await fs.rm(site, {recursive: true})
    await fs.mkdir(site)
    const forged = `a 644 ${createHash('sha256').update('X').digest('hex')}\nfile b`
    await fs.writeFile(path.join(site, forged), 'Y')
    await fs.chmod(path.join(site, forged), 0o644)
    const second = await build('FROM bb\nCOPY site/ /s/\n')
    expect(second.run.exitCode, second.run.stderr).to.equal(0)
    expect(second.json.steps[1].cached).to.equal(false)
    expect(await fs.readdir(box.data(second.json.steps[1].wafer as string, 's'))).to.deep.equal([forged])
  })

  it('refuses to mount steps under a /run/wafers that is a link, following it never', async function () {
    // A /run of this test's own (the suite runs in a private mount namespace), with /run/wafers a
    // link to a directory on the host; a store anyone may write to, so wafers mounts the step itself.
    await fs.chmod(box.wafers, 0o777)
    const target = path.join(box.root, 'run-target')
    await fs.mkdir(target)
    await execa('mount', ['-t', 'tmpfs', 'tmpfs', '/run'])
    try {
      await fs.symlink(target, '/run/wafers')
      const {run} = await build('FROM bb\nRUN touch /x\n')
      expect(run.exitCode).to.equal(1)
      expect(said(run.stderr)).to.include('/run/wafers is not a directory only root may write to')
      expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
      expect(await fs.readdir(target)).to.deep.equal([])
    } finally {
      await execa('umount', ['--lazy', '/run'])
    }
  })

  it('a RUN writes only into its wafer even when someone who may write to the store swaps the build staging directory as nspawn starts', async function () {
    this.timeout(120_000)
    // Anyone may write to this store: nspawn must then never be handed a path through it.
    await fs.chmod(box.wafers, 0o777)
    const attacker = execa(
      process.execPath,
      [
        fileURLToPath(new URL('../fixtures/swap-stage.mjs', import.meta.url)),
        box.wafers,
        victim,
        path.join(box.root, 'evil'),
      ],
      {reject: false},
    )
    const {json, run} = await build('FROM bb\nRUN sleep 1 && echo made > /made\n')
    const {stdout} = await attacker
    expect(stdout.trim(), 'the attacker saw nspawn start').to.not.equal('no nspawn')
    // The swap races nspawn; what decides it is that nspawn is given no path through the store.
    const {args, swapped} = JSON.parse(stdout) as {args: string[]; swapped: number}
    expect(swapped, 'stages swapped').to.be.above(0)
    expect(args.filter((arg) => arg.includes(box.wafers))).to.deep.equal([])
    expect(await fs.readdir(victim)).to.deep.equal([])
    if (run.exitCode === 0) {
      expect(await fs.readFile(box.data(json.steps[1].wafer as string, 'made'), 'utf8')).to.equal('made\n')
    } else {
      expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
    }
  })

  it('kill -9 of the build mid-RUN takes nspawn with it; the next build runs fine', async function () {
    const {child} = await buildUntilBegun()

    child.kill('SIGKILL')
    await child
    // Every process whose command line names this sandbox's store (nspawn has it in --overlay).
    const survivors = async () => {
      const found: string[] = []
      for (const pid of await fs.readdir('/proc')) {
        if (!/^\d+$/.test(pid)) continue
        const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
        if (cmdline.includes(box.wafers)) found.push(cmdline.replaceAll('\0', ' '))
      }

      return found
    }

    await new Promise((resolve) => setTimeout(resolve, 500))
    expect(await survivors()).to.deep.equal([])
    await new Promise((resolve) => setTimeout(resolve, 5000))
    const {stdout} = await execa('find', [box.wafers, '-name', 'late-marker'])
    expect(stdout).to.equal('')
    const again = await build('FROM bb\nRUN echo again > /again\n')
    expect(again.run.exitCode, again.run.stderr).to.equal(0)
  })

  it('kill -9 of a build that mounted its step itself (a store others may write to): the next build unmounts what it left', async function () {
    this.timeout(120_000)
    await fs.chmod(box.wafers, 0o777)
    const {child} = await buildUntilBegun()

    // The step is mounted here, in this namespace, on a directory under /run/wafers.
    const stepMounts = async () =>
      (await fs.readFile('/proc/self/mountinfo', 'utf8'))
        .split('\n')
        .filter((line) => line.includes(' /run/wafers/') && line.includes(box.wafers))
    expect(await stepMounts()).to.have.length(1)
    child.kill('SIGKILL')
    await child
    await new Promise((resolve) => setTimeout(resolve, 5000))
    const {stdout} = await execa('find', [box.wafers, '-name', 'late-marker'])
    expect(stdout, 'the RUN died with the build').to.equal('')
    const again = await build('FROM bb\nRUN echo again > /again\n')
    expect(again.run.exitCode, again.run.stderr).to.equal(0)
    expect(await stepMounts(), "the killed build's mount is gone").to.deep.equal([])
    // Nothing of either build is left under /run/wafers (nspawn's lock files included).
    const id = createHash('sha256')
      .update(await fs.realpath(box.wafers))
      .digest('hex')
      .slice(0, 16)
    expect(await fs.readdir(path.join('/run/wafers', id)).catch(() => [])).to.deep.equal([])
  })

  it('refuses re-pointing NAME that another wafer sits on, and rebuilds NAME unchanged though it has files', async function () {
    const file = 'FROM bb\nRUN echo one > /one\n'
    expect((await build(file)).run.exitCode).to.equal(0)
    // Unchanged rebuild of a NAME with files of its own: nothing to re-point, so not refused.
    await fs.writeFile(box.data('web', 'mine'), 'x\n')
    const again = await build(file)
    expect(again.run.exitCode, again.run.stderr).to.equal(0)
    await fs.rm(box.data('web', 'mine'))

    expect((await box.run(['create', 'kid', 'web'])).exitCode).to.equal(0)
    const parent = await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8')
    const changed = await build('FROM bb\nRUN echo two > /two\n')
    expect(changed.run.exitCode).to.equal(1)
    expect(said(changed.run.stderr)).to.include('wafer web is the parent of kid')
    expect(await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8')).to.equal(parent)
  })

  it('COPY --from and FROM refuse a wafer whose directory is a link out of the store', async function () {
    const outside = path.join(box.root, 'outside')
    await fs.mkdir(path.join(outside, 'data'), {recursive: true})
    await fs.writeFile(path.join(outside, 'data', 'secret'), 'host secret\n')
    await fs.symlink(outside, path.join(box.wafers, 'evil'))
    const copy = await build('FROM bb\nCOPY --from=evil /secret /got\n')
    expect(copy.run.exitCode).to.equal(1)
    expect(said(copy.run.stderr)).to.include('the directory of wafer evil, is a symlink; wafers does not follow it.')
    const from = await build('FROM evil\nRUN true\n')
    expect(from.run.exitCode).to.equal(1)
    expect(said(from.run.stderr)).to.include('the directory of wafer evil, is a symlink; wafers does not follow it.')
    const {stdout} = await execa('grep', ['-rl', 'host secret', box.wafers], {reject: false})
    expect(stdout).to.equal('')
  })

  it('expands variables in --chown and --from, and refuses --from=, an unended heredoc and a malformed passwd row clearly', async function () {
    await fs.writeFile(path.join(context, 'f'), 'f\n')
    const ok = await build('FROM bb\nARG WHO=1234:4321\nCOPY --chown=$WHO f /owned\n')
    expect(ok.run.exitCode, ok.run.stderr).to.equal(0)
    const stat = await fs.stat(box.data(ok.json.steps[2].wafer as string, 'owned'))
    expect([stat.uid, stat.gid]).to.deep.equal([1234, 4321])

    const before = await storeTree(box)
    const empty = await build('FROM bb\nCOPY --from= f /y\n')
    expect(empty.run.exitCode).to.equal(1)
    expect(said(empty.run.stderr)).to.include('line 2: --from takes the name of a stage or a wafer.')
    const heredoc = await build('FROM bb\nRUN <<EOF\necho hi\n')
    expect(heredoc.run.exitCode).to.equal(1)
    expect(said(heredoc.run.stderr)).to.include('line 2: the here-document EOF has no line EOF to end it.')
    expect(await storeTree(box)).to.deep.equal(before)

    const bad = await build("FROM bb\nRUN echo 'odd:x:abc:def::/:/bin/sh' >> /etc/passwd\nCOPY --chown=odd f /o\n")
    expect(bad.run.exitCode).to.equal(1)
    expect(said(bad.run.stderr)).to.include("--chown: the image's /etc/passwd row of odd has no numeric uid and gid.")
  })

  it('follows a Dockerfile that is a link inside the context, and only inside it', async function () {
    await fs.mkdir(path.join(context, 'files'))
    await fs.writeFile(path.join(context, 'files', 'Dockerfile.real'), 'FROM bb\nRUN echo linked > /linked\n')
    await fs.symlink('files/Dockerfile.real', path.join(context, 'Dockerfile'))
    const run = await box.run(['build', '-t', 'web', context])
    expect(run.exitCode, run.stderr).to.equal(0)
    await fs.rm(path.join(context, 'Dockerfile'))
    await fs.writeFile(path.join(box.root, 'outside-file'), 'FROM bb\n')
    await fs.symlink(path.join(box.root, 'outside-file'), path.join(context, 'Dockerfile'))
    const out = await box.run(['build', '-t', 'web2', context])
    expect(out.exitCode).to.equal(1)
    expect(said(out.stderr)).to.include('there is no Containerfile or Dockerfile in')
  })
})
