import {expect} from 'chai'
import {type ResultPromise, execa} from 'execa'
import {promises as fs} from 'node:fs'
import http from 'node:http'
import type net from 'node:net'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {lockDirectory} from '../../src/lib/store/lock.js'
import {type BuildJson, busyboxBase, said, Sandbox, useSandbox} from '../helpers/sandbox.js'

const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))

/**
 * A loopback HTTP server a RUN fetches from (nspawn shares the host's network): it counts the
 * RUNs that really ran, answers each with its number, and holds the first answer until the test
 * releases it, so that the first build's RUN is under way for certain while the second starts.
 */
class Gate {
  requests = 0
  private open!: () => void
  private readonly opened = new Promise<void>((resolve) => {
    this.open = resolve
  })
  private readonly server = http.createServer(async (request, response) => {
    const number = ++this.requests
    if (number === 1) await this.opened
    response.end(`request ${number}\n`)
  })

  get port(): number {
    return (this.server.address() as net.AddressInfo).port
  }

  async close(): Promise<void> {
    this.release()
    this.server.closeAllConnections()
    await new Promise((resolve) => {
      this.server.close(resolve)
    })
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.listen(0, '127.0.0.1', resolve)
    })
  }

  release(): void {
    this.open()
  }
}

/** A build running in the background, its output (stdout and stderr together) collected as it comes. */
interface Running {
  child: ResultPromise
  output: () => string
}

describe('wafers build: two builds of the same steps at the same time (real nspawn, real overlays)', function () {
  let box: Sandbox
  let context: string
  let gate: Gate
  let started: ResultPromise[] = []
  useSandbox((created) => {
    box = created
  })

  beforeEach(async function () {
    this.timeout(120_000)
    context = await busyboxBase(box)
    gate = new Gate()
    await gate.listen()
  })

  afterEach(async function () {
    // A test that failed midway leaves no build running into the next one (or keeping mocha alive).
    for (const child of started) child.kill('SIGKILL')
    await Promise.all(started)
    started = []
    await gate?.close()
  })

  const containerfile = async (run = ''): Promise<void> => {
    await fs.writeFile(
      path.join(context, 'Containerfile'),
      `FROM bb\nRUN wget -q -O /stamp http://127.0.0.1:${gate.port}/${run}\nRUN cat /stamp > /copy\n`,
    )
  }

  const start = (...args: string[]): Running => {
    let output = ''
    const tag = args.includes('-t') ? [] : ['-t', 'web']
    const child = execa(process.execPath, [bin, 'build', ...tag, ...args, context], {
      all: true,
      env: box.env,
      reject: false,
      stdin: 'ignore',
    })
    started.push(child)
    child.all?.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    return {child, output: () => output}
  }

  const json = (result: {exitCode?: number; stdout?: unknown}): BuildJson => {
    expect(result.exitCode, String(result.stdout)).to.equal(0)
    return JSON.parse(String(result.stdout)) as BuildJson
  }

  /** Waits (at most a minute) until `done` holds; fails saying `what` otherwise. */
  const until = async (what: string, done: () => Promise<boolean> | boolean): Promise<void> => {
    for (let tries = 0; !(await done()); tries++) {
      if (tries > 600) throw new Error(`gave up waiting until ${what}`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }

  /**
   * Whether the second build has come to the step's claim: it makes its staging directory right
   * before it claims the step, so two builds' staging directories are there. Seen from outside, so
   * that it works for a build with --json too, which prints no progress.
   */
  const someoneWaits = async (): Promise<boolean> =>
    (await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.create-build-')).length > 1

  /** How many flock(1)s wait (-w) for a lock on a directory `which` picks. */
  const waitersOn = async (which: (dir: string) => boolean): Promise<number> => {
    let waiters = 0
    for (const pid of await fs.readdir('/proc')) {
      if (!/^\d+$/.test(pid)) continue
      const cmdline = (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')
      if (!cmdline[0]?.endsWith('flock') || !cmdline.includes('-w')) continue
      const locked = await fs.readlink(`/proc/${pid}/fd/3`).catch(() => '')
      if (which(locked)) waiters++
    }

    return waiters
  }

  /** The store's own entries besides the links: what a build must not leave behind. */
  const leftovers = async (): Promise<string[]> =>
    (await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.') && entry !== '.links')

  /** Mounts under the store: a build leaves none. */
  const mountsLeft = async (): Promise<string[]> =>
    (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((line) => line.includes(box.wafers))

  const stampOf = async (wafer: null | string | undefined): Promise<string> =>
    fs.readFile(box.data(wafer as string, 'stamp'), 'utf8')

  it('both succeed with the same step wafers, and the RUN runs once: the second waits for the first', async function () {
    this.timeout(180_000)
    await containerfile()
    const first = start('--json')
    await until('the first RUN is under way', () => gate.requests === 1)
    const second = start('--json')
    // Without a step lock the second build runs the same RUN (a second request) instead of waiting.
    await until('the second build waits or runs the RUN too', async () => gate.requests > 1 || someoneWaits())
    gate.release()
    const [a, b] = [json(await first.child), json(await second.child)]

    expect(gate.requests, 'RUNs that ran').to.equal(1)
    expect(b.steps.map((step) => step.wafer)).to.deep.equal(a.steps.map((step) => step.wafer))
    expect(a.steps.map((step) => step.cached)).to.deep.equal([true, false, false])
    expect(b.steps.map((step) => step.cached)).to.deep.equal([true, true, true])
    expect(await stampOf(a.steps[1].wafer)).to.equal('request 1\n')
    expect(await fs.readFile(box.data(a.steps[2].wafer as string, 'copy'), 'utf8')).to.equal('request 1\n')
    expect(await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8')).to.equal(`${a.steps[2].wafer}\n`)
    // One wafer per step: the base, the two RUNs, and web; no stage, no lock left.
    const list = await box.run(['list', '--json'])
    const names = (JSON.parse(list.stdout) as Array<{name: string}>).map((wafer) => wafer.name)
    expect(names.sort()).to.deep.equal(['bb', a.steps[1].wafer, a.steps[2].wafer, 'web'].sort())
    expect(await leftovers()).to.deep.equal([])
    expect(await mountsLeft()).to.deep.equal([])
  })

  it('takes a step wafer another build made meanwhile without the lock, and discards its own staging', async function () {
    this.timeout(180_000)
    await containerfile()
    const first = start('--json')
    await until('the first RUN is under way', () => gate.requests === 1)
    // As if the other build took no lock (an older wafers, or its lock removed): it is not waited for.
    const locks = (await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.step-'))
    expect(locks).to.have.length(1)
    await fs.unlink(path.join(box.wafers, locks[0]))
    const b = json(await start('--json').child)
    expect(gate.requests, 'RUNs that ran').to.equal(2)
    gate.release()
    const a = json(await first.child)
    expect(a.steps.map((step) => step.wafer)).to.deep.equal(b.steps.map((step) => step.wafer))
    expect(await stampOf(a.steps[1].wafer)).to.equal('request 2\n')
    expect(await mountsLeft()).to.deep.equal([])
    const list = await box.run(['list', '--json'])
    expect((JSON.parse(list.stdout) as Array<{name: string}>).map((wafer) => wafer.name)).to.have.length(4)
    expect(await leftovers()).to.deep.equal([])
  })

  it('refuses a step claim that links elsewhere or is a FIFO, following and opening neither', async function () {
    this.timeout(180_000)
    await containerfile()
    const first = start()
    await until('the first RUN is under way', () => gate.requests === 1)
    const [name] = (await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.step-'))
    first.child.kill('SIGKILL')
    await first.child
    const lock = path.join(box.wafers, name)
    const outside = path.join(box.root, 'outside')
    await fs.mkdir(outside)
    await fs.unlink(lock)
    await fs.symlink(outside, lock)
    const refused = `${lock}, the claim of a build step, is not a link to a build's staging directory; wafers neither follows nor opens it.`
    const linked = await box.run(['build', '-t', 'web', context])
    expect(linked.exitCode).to.equal(1)
    expect(said(linked.stderr)).to.include(refused)
    expect((await fs.lstat(lock)).isSymbolicLink()).to.equal(true)
    expect(await fs.readdir(outside)).to.deep.equal([])
    await fs.unlink(lock)
    await execa('mkfifo', [lock])
    const fifo = await box.run(['build', '-t', 'web', context])
    expect(fifo.exitCode).to.equal(1)
    expect(said(fifo.stderr)).to.include(refused)
    expect(gate.requests, 'RUNs that ran').to.equal(1)
  })

  it('two builds making the same NAME at once both succeed: the second finds NAME as it would make it', async function () {
    this.timeout(180_000)
    await containerfile()
    gate.release()
    json(await start('--json', '-t', 'first').child)
    // Every step is cached now; the store lock, held here, stops both builds in the create of NAME,
    // after each saw that NAME does not exist yet.
    const store = await lockDirectory(box.wafers)
    let a: BuildJson
    let b: BuildJson
    try {
      const [first, second] = [start('--json'), start('--json')]
      await until('both builds wait to create web', async () => (await waitersOn((dir) => dir === box.wafers)) === 2)
      store?.release()
      ;[a, b] = [json(await first.child), json(await second.child)]
    } finally {
      store?.release()
    }

    expect(a.steps.map((step) => step.wafer)).to.deep.equal(b.steps.map((step) => step.wafer))
    expect(await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8')).to.equal(`${a.steps[2].wafer}\n`)
    expect(gate.requests, 'RUNs that ran').to.equal(1)
    expect(await leftovers()).to.deep.equal([])
  })

  it('says it waits; when the first build fails the RUN, the second runs it itself and fails the same way', async function () {
    this.timeout(180_000)
    await containerfile(' && exit 3')
    const first = start()
    await until('the first RUN is under way', () => gate.requests === 1)
    const second = start()
    await until(
      'the second build waits or runs the RUN too',
      () => gate.requests > 1 || second.output().includes('waiting'),
    )
    expect(second.output()).to.include('waiting for another build making this step')
    gate.release()
    const [a, b] = [await first.child, await second.child]
    const failed = 'step 2 (RUN wget'
    for (const result of [a, b]) {
      expect(result.exitCode, String(result.all)).to.equal(1)
      expect(said(String(result.all)))
        .to.include(failed)
        .and.to.include('exit code 3')
    }

    expect(gate.requests, 'RUNs that ran').to.equal(2)
    expect((await box.run(['list', '--json'])).stdout).to.not.include('build-')
    expect(await leftovers()).to.deep.equal([])
  })

  it('when the first build is killed (kill -9), the waiting one makes the step itself', async function () {
    this.timeout(180_000)
    await containerfile()
    const first = start()
    await until('the first RUN is under way', () => gate.requests === 1)
    const second = start('--json')
    await until('the second build waits or runs the RUN too', async () => gate.requests > 1 || someoneWaits())
    first.child.kill('SIGKILL')
    await first.child
    const b = json(await second.child)
    expect(gate.requests, 'RUNs that ran').to.equal(2)
    expect(b.steps.map((step) => step.cached)).to.deep.equal([true, false, false])
    expect(await stampOf(b.steps[1].wafer)).to.equal('request 2\n')
    expect((await fs.readdir(box.wafers)).filter((entry) => entry.startsWith('.step-'))).to.deep.equal([])
  })

  it('Ctrl-C ends the wait at once with the usual interrupted message; the first build goes on', async function () {
    this.timeout(180_000)
    await containerfile()
    const first = start('--json')
    await until('the first RUN is under way', () => gate.requests === 1)
    const second = start()
    await until('the second build waits', () => gate.requests > 1 || second.output().includes('waiting'))
    const stopped = Date.now()
    second.child.kill('SIGINT')
    const b = await second.child
    expect(Date.now() - stopped).to.be.below(10_000)
    expect(b.exitCode, String(b.all)).to.equal(130)
    expect(said(String(b.all))).to.include(
      `interrupted during step 2 (RUN wget -q -O /stamp http://127.0.0.1:${gate.port}/) while waiting for another build making it; no wafer was made for it.`,
    )
    gate.release()
    const a = json(await first.child)
    expect(gate.requests, 'RUNs that ran').to.equal(1)
    expect(await stampOf(a.steps[1].wafer)).to.equal('request 1\n')
    expect(await leftovers()).to.deep.equal([])
  })

  it('with --no-cache, each build makes its own generation of the step, and neither fails', async function () {
    this.timeout(180_000)
    await containerfile()
    const first = start('--json', '--no-cache')
    await until('the first RUN is under way', () => gate.requests === 1)
    const second = start('--json', '--no-cache')
    await until('the second build waits or runs the RUN too', async () => gate.requests > 1 || someoneWaits())
    gate.release()
    const [a, b] = [json(await first.child), json(await second.child)]
    expect(gate.requests, 'RUNs that ran').to.equal(2)
    expect(a.steps[1].wafer).to.not.equal(b.steps[1].wafer)
    expect(await stampOf(a.steps[1].wafer)).to.equal('request 1\n')
    expect(await stampOf(b.steps[1].wafer)).to.equal('request 2\n')
    expect(await leftovers()).to.deep.equal([])
    // web is on the result of whichever finished last; a later cached build takes the newest generation.
    expect([`${a.steps[2].wafer}\n`, `${b.steps[2].wafer}\n`]).to.include(
      await fs.readFile(path.join(box.wafers, 'web', 'parent'), 'utf8'),
    )
    const again = json(await start('--json').child)
    expect(again.steps.map((step) => step.wafer)).to.deep.equal(b.steps.map((step) => step.wafer))
  })
})
