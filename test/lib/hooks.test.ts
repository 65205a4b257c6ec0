import {expect} from 'chai'
import {readFileSync} from 'node:fs'

import type {HookOutcome, HookRunner, Seeder, WafersHookEvent} from '../../src/lib/hooks.js'
import {HookError, fireHook, firePostHook, stackHookSteps} from '../../src/lib/hooks.js'
import {hasInterpreter} from '../../src/lib/seed/seeders/busybox.js'
import {runStreaming} from '../../src/lib/host/run.js'
import {collectSeeders, findSeeder, splitSeederArgs} from '../../src/lib/seed/seed.js'

/** A runner whose plugins answer each event as given: a result, or an Error to throw. */
function fakeRunner(
  answers: Partial<Record<WafersHookEvent, Record<string, unknown>>>,
): HookRunner & {fired: string[]} {
  const fired: string[] = []
  return {
    fired,
    has: (event) => answers[event] !== undefined,
    async run(event) {
      fired.push(event)
      const outcome: HookOutcome<never> = {failures: [], successes: []}
      for (const [plugin, answer] of Object.entries(answers[event] ?? {})) {
        if (answer instanceof Error) outcome.failures.push({error: answer, plugin})
        else outcome.successes.push({plugin, result: answer as never})
      }

      return outcome
    },
  }
}

const seeder = (name: string): Seeder => ({name, async seed() {}, summary: `the ${name} seeder`})

describe('hooks', function () {
  it('fires nothing when no plugin listens', async function () {
    const runner = fakeRunner({})
    await fireHook(runner, 'wafers:prestack', {layers: [], mountpoint: '/m', name: 'n', wafers: []})
    expect(runner.fired).to.deep.equal([])
    expect(
      stackHookSteps(
        runner,
        () => ({layers: [], mountpoint: '/m', name: 'n', wafers: []}),
        async () => {},
        () => undefined,
      ),
    ).to.deep.equal({post: [], pre: []})
  })

  it('names every plugin whose handler threw, with its message', async function () {
    const runner = fakeRunner({
      'wafers:preunstack': {a: new Error('not now.\nsecond line'), b: undefined as never, c: new Error('busy')},
    })
    runner.has = () => true
    try {
      await fireHook(runner, 'wafers:preunstack', {mountpoint: '/m', name: 'n'})
      expect.fail('no error')
    } catch (error) {
      expect(error).to.be.instanceOf(HookError)
      expect((error as Error).message).to.equal(
        'the wafers:preunstack hook of a failed: not now; the wafers:preunstack hook of c failed: busy.',
      )
    }
  })

  it('undoes after a failed post hook and says so, or says that undoing failed too', async function () {
    const runner = fakeRunner({'wafers:poststack': {a: new Error('no')}})
    let undone = 0
    const options = {layers: [], mountpoint: '/m', name: 'n', wafers: []}
    const undo = async () => {
      undone++
    }

    const failure = await firePostHook(
      runner,
      'wafers:poststack',
      options,
      undo,
      'the stack was unmounted again',
    ).catch((error: Error) => error)
    expect(failure?.message).to.equal('the wafers:poststack hook of a failed: no; the stack was unmounted again.')
    expect(undone).to.equal(1)
    const worse = await firePostHook(
      runner,
      'wafers:poststack',
      options,
      async () => {
        throw new Error('umount: target is busy.')
      },
      'x',
    ).catch((error: Error) => error)
    expect(worse?.message).to.equal(
      'the wafers:poststack hook of a failed: no; undoing it failed too: umount: target is busy.',
    )
  })
})

describe('seeders', function () {
  it("collects every plugin's seeders sorted by name, and says which offers were ignored", async function () {
    const runner = fakeRunner({
      'wafers:seeders': {
        broken: new Error('cannot load'),
        one: [seeder('zeta'), seeder('alpha')],
        two: [seeder('beta'), {name: '../evil', async seed() {}, summary: ''}, {name: 'no-seed'}],
      },
    })
    const {problems, seeders} = await collectSeeders(runner)
    expect(seeders.map((entry) => `${entry.name}@${entry.plugin}`)).to.deep.equal(['alpha@one', 'beta@two', 'zeta@one'])
    expect(problems).to.deep.equal([
      'the seeders of broken are unavailable: cannot load.',
      'two offers a seeder without a valid name and seed function; it is ignored.',
      'two offers a seeder without a valid name and seed function; it is ignored.',
    ])
  })

  it('refuses an unknown seeder listing the known ones, and one offered twice naming both plugins', async function () {
    const {seeders} = await collectSeeders(
      fakeRunner({'wafers:seeders': {one: [seeder('dir'), seeder('tar')], two: [seeder('tar')]}}),
    )
    expect(() => findSeeder(seeders, 'nope')).to.throw('there is no seeder "nope"; there are dir, tar.')
    expect(() => findSeeder(seeders, 'tar')).to.throw('seeder tar is offered by more than one plugin (one, two).')
    expect(findSeeder(seeders, 'dir').plugin).to.equal('one')
    expect(() => findSeeder([], 'dir')).to.throw('there is no seeder "dir"; there are none.')
  })

  it('gives everything after the first -- to the seeder, untouched', function () {
    expect(splitSeederArgs(['base', '--seed', 'debootstrap', '--', 'bookworm', '--json', '--'])).to.deep.equal({
      own: ['base', '--seed', 'debootstrap'],
      seederArgs: ['bookworm', '--json', '--'],
    })
    expect(splitSeederArgs(['base'])).to.deep.equal({own: ['base'], seederArgs: []})
  })

  it("streams a program's lines as it prints them and says what it said last when it fails", async function () {
    const lines: string[] = []
    const ok = await runStreaming('sh', ['-c', 'echo one; echo two >&2'], (line) => lines.push(line))
    expect(ok).to.deep.equal({exitCode: 0, tail: ['one', 'two']})
    expect(lines).to.deep.equal(['one', 'two'])
    const failed = runStreaming('sh', ['-c', 'echo working; echo broken >&2; exit 4'], () => {})
    await failed.then(
      () => expect.fail('no error'),
      (error: Error) => expect(error.message).to.equal('sh failed (exit code 4): broken'),
    )
    expect((await runStreaming('sh', ['-c', 'exit 4'], () => {}, {check: false})).exitCode).to.equal(4)
    await runStreaming('no-such-program-here', [], () => {}, {package: 'wafers-tools'}).then(
      () => expect.fail('no error'),
      (error: Error) =>
        expect(error.message).to.equal(
          'no-such-program-here is not installed or not on PATH; install the wafers-tools package.',
        ),
    )
  })

  it('tells a static busybox from a dynamically linked program', function () {
    expect(hasInterpreter(readFileSync(process.execPath))).to.equal(true)
    const busybox = ['/bin/busybox', '/usr/bin/busybox'].find((file) => {
      try {
        readFileSync(file, {flag: 'r'})
        return true
      } catch {
        return false
      }
    })
    if (busybox) expect(hasInterpreter(readFileSync(busybox))).to.equal(false)
  })
})
