import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {Registry} from '../helpers/registry.js'
import {buildWeb, busyboxBase, hasStackTrace, said, Sandbox, snapshot, useSandbox} from '../helpers/sandbox.js'

describe('wafers build: what buildah does that wafers build does too, or refuses up front', function () {
  let box: Sandbox
  let context: string
  useSandbox((created) => {
    box = created
  })

  beforeEach(async function () {
    this.timeout(120_000)
    context = await busyboxBase(box)
  })

  const build = async (file: string, ...args: string[]) => buildWeb(box, context, file, ...args)

  it('refuses -t NAME of a wafer not made by build before any step runs', async function () {
    this.timeout(120_000)
    await box.wafer('web', {files: {'mine.txt': 'mine\n'}})
    const before = await snapshot(box.wafers)
    const {run} = await build('FROM bb\nRUN echo hi > /made\nCOPY Containerfile /\n')
    expect(run.exitCode).to.not.equal(0)
    expect(said(run.stderr)).to.include('wafer web exists and was not made by wafers build; it is left as it is.')
    expect(hasStackTrace(run.stderr)).to.equal(false)
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  it('gives the --tls-verify=false hint for FROM of a registry on plain HTTP', async function () {
    this.timeout(120_000)
    const registry = await Registry.start()
    try {
      const before = await snapshot(box.wafers)
      await fs.writeFile(path.join(context, 'Containerfile'), `FROM ${registry.host}/app:1\nRUN echo hi > /made\n`)
      // Without --json: what a user reads on the terminal, hint included.
      const run = await box.run(['build', '-t', 'web', context])
      expect(run.exitCode).to.not.equal(0)
      const text = said(run.stderr)
      expect(text).to.include(
        `line 1: FROM ${registry.host}/app:1: the registry ${registry.host} speaks plain HTTP, not HTTPS.`,
      )
      expect(text).to.include('--tls-verify=false')
      expect(text).to.not.include('Name an existing wafer')
      expect(await snapshot(box.wafers)).to.deep.equal(before)
    } finally {
      await registry.stop()
    }
  })

  it('refuses a RUN in a stage of another platform, and a --target no stage has, before anything is made', async function () {
    this.timeout(120_000)
    const before = await snapshot(box.wafers)
    await fs.writeFile(
      path.join(context, 'Containerfile'),
      'FROM bb\nFROM --platform=linux/arm64 bb\nCOPY Containerfile /\nRUN echo hi > /made\n',
    )
    const foreign = await box.run(['build', '-t', 'web', context])
    expect(foreign.exitCode).to.not.equal(0)
    expect(said(foreign.stderr)).to.include(
      'line 4: RUN cannot run on this machine: its stage is for linux/arm64, and this machine is linux/amd64.',
    )
    const flag = await box.run(['build', '-t', 'web', '--platform', 'linux/arm64', context])
    expect(said(flag.stderr)).to.include('line 4: RUN cannot run on this machine: its stage is for linux/arm64')
    const target = await box.run(['build', '-t', 'web', '--target', 'nope', context])
    expect(target.exitCode).to.equal(2)
    expect(said(target.stderr)).to.include('--target nope names no stage of the Containerfile (FROM ... AS nope).')
    for (const run of [foreign, flag, target]) expect(hasStackTrace(run.stderr)).to.equal(false)
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  it('refuses ADD of a URL the server does not give, in one sentence, with no wafer for it', async function () {
    this.timeout(120_000)
    const {closedPort} = await import('../helpers/net.js')
    const port = await closedPort()
    await fs.writeFile(path.join(context, 'a.txt'), 'a\n')
    const {run} = await build('FROM bb\nCOPY a.txt /\n')
    expect(run.exitCode, run.stderr).to.equal(0)
    const before = await snapshot(box.wafers)
    const failed = await build(`FROM bb\nCOPY a.txt /\nADD http://127.0.0.1:${port}/x /x\n`)
    expect(failed.run.exitCode).to.equal(1)
    expect(said(failed.run.stderr)).to.include(`line 3: http://127.0.0.1:${port}/x cannot be downloaded: ECONNREFUSED.`)
    expect(hasStackTrace(failed.run.stderr)).to.equal(false)
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  it('refuses RUN --mount=type=secret of a secret not given, with the --secret hint, and makes nothing for it', async function () {
    this.timeout(120_000)
    const before = await snapshot(box.wafers)
    await fs.writeFile(
      path.join(context, 'Containerfile'),
      'FROM bb\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n',
    )
    const run = await box.run(['build', '-t', 'web', context])
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include('line 2: RUN --mount type=secret,id=tok: no secret tok was given.')
    expect(said(run.stderr)).to.include('--secret id=tok,src=FILE')
    expect(hasStackTrace(run.stderr)).to.equal(false)
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  it('runs and copies BuildKit here-documents (beyond buildah 1.28)', async function () {
    this.timeout(120_000)
    const {json, run} = await build(
      [
        'FROM bb',
        'ARG WHO=world',
        'RUN <<EOF',
        'echo "hello $WHO" > /script-ran',
        'echo second line >> /script-ran',
        'EOF',
        'RUN cat <<-END > /piped && echo after >> /piped',
        '\tindented $WHO',
        '\tEND',
        'COPY --chmod=0755 <<one <<"two" /docs/',
        'one says $WHO',
        'one',
        'two keeps $WHO',
        'two',
        '',
      ].join('\n'),
    )
    expect(run.exitCode, run.stderr).to.equal(0)
    const wafer = (index: number) => json.steps[index].wafer as string
    expect(await fs.readFile(box.data(wafer(2), 'script-ran'), 'utf8')).to.equal('hello world\nsecond line\n')
    expect(await fs.readFile(box.data(wafer(3), 'piped'), 'utf8')).to.equal('indented world\nafter\n')
    expect(await fs.readFile(box.data(wafer(4), 'docs', 'one'), 'utf8')).to.equal('one says world\n')
    expect(await fs.readFile(box.data(wafer(4), 'docs', 'two'), 'utf8')).to.equal('two keeps $WHO\n')
    expect((await fs.stat(box.data(wafer(4), 'docs', 'two'))).mode & 0o7777).to.equal(0o755)
    const again = await build(await fs.readFile(path.join(context, 'Containerfile'), 'utf8'))
    expect(again.json.steps.every((step) => step.cached)).to.equal(true)
  })
})
