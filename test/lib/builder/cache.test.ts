import {expect} from 'chai'
import {execFileSync} from 'node:child_process'
import {promises as fs, lstatSync, readlinkSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {probeStep, stepKey, stepWaferName} from '../../../src/lib/builder/cache.js'
import {claimStep, removeAbandonedClaims} from '../../../src/lib/builder/claims.js'
import {writeMeta} from '../../../src/lib/store/meta.js'
import {isValidName} from '../../../src/lib/store/names.js'
import {WaferStore} from '../../../src/lib/store/store.js'

/** sha256 of `text` as coreutils' sha256sum computes it: another implementation than node's. */
function sha256sum(text: string): string {
  return execFileSync('sha256sum', [], {encoding: 'utf8', input: text}).split(' ')[0]
}

describe('build step cache keys', function () {
  const input = {parent: 'bb:12:3:4', sources: 'sha256:ab', state: {env: ['A=1'], user: ''}, text: 'RUN make'}

  it('are the sha256 of what the step depends on, so a cached step stays cached from one wafers to the next', function () {
    const expected = sha256sum(JSON.stringify([1, input.parent, input.text, input.state, input.sources]))
    expect(stepKey(input)).to.equal(expected)
    expect(stepKey({...input, sources: undefined})).to.equal(
      sha256sum(JSON.stringify([1, input.parent, input.text, input.state, null])),
    )
  })

  it('change with the parent, the instruction, the state and the sources, and with nothing else', function () {
    const keys = [
      stepKey(input),
      stepKey({...input, parent: 'build-0123'}),
      stepKey({...input, text: 'RUN  make'}),
      stepKey({...input, state: {env: ['A=2'], user: ''}}),
      stepKey({...input, sources: 'sha256:ac'}),
      stepKey({...input, sources: undefined}),
    ]
    expect(new Set(keys).size).to.equal(keys.length)
    expect(stepKey({...input, state: {env: ['A=1'], user: ''}})).to.equal(keys[0])
  })

  it('name step wafers build- and 40 hex digits, a new name per --no-cache generation', function () {
    const key = stepKey(input)
    expect(stepWaferName(key)).to.equal(`build-${key.slice(0, 40)}`)
    expect(stepWaferName(key, 2)).to.equal(`build-${sha256sum(`${key}/2`).slice(0, 40)}`)
    expect(new Set([0, 1, 2].map((generation) => stepWaferName(key, generation))).size).to.equal(3)
    for (const generation of [0, 1, 2]) expect(isValidName(stepWaferName(key, generation))).to.equal(true)
  })
})

describe('build step probe and claims (a store in a temporary directory)', function () {
  let root: string
  let store: WaferStore
  const key = stepKey({parent: 'base', state: {}, text: 'RUN true'})

  /** Makes wafer `name` by hand, as the bash tool would: data/, a parent file, meta.json. */
  async function wafer(name: string, parent: string | undefined, stepKeyOf?: string): Promise<void> {
    await fs.mkdir(path.join(root, name, 'data'), {recursive: true})
    if (parent !== undefined) await fs.writeFile(path.join(root, name, 'parent'), `${parent}\n`)
    if (stepKeyOf !== undefined) writeMeta(path.join(root, name), {build: {instruction: 'RUN true', key: stepKeyOf}})
  }

  beforeEach(async function () {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-cache-'))
    store = new WaferStore(root)
  })

  afterEach(async function () {
    await fs.rm(root, {force: true, recursive: true})
  })

  it('finds the newest generation of a step cached, and names the next one under --no-cache', async function () {
    expect(await probeStep(store, key, 'base')).to.deep.equal({cached: false, name: stepWaferName(key)})
    await wafer('base', undefined)
    await wafer(stepWaferName(key), 'base', key)
    expect(await probeStep(store, key, 'base')).to.deep.equal({cached: true, name: stepWaferName(key)})
    expect(await probeStep(store, key, 'base', true)).to.deep.equal({cached: false, name: stepWaferName(key, 1)})
    await wafer(stepWaferName(key, 1), 'base', key)
    expect(await probeStep(store, key, 'base')).to.deep.equal({cached: true, name: stepWaferName(key, 1)})
  })

  it('refuses a wafer under the step name that is not the step, naming it, and leaves it alone', async function () {
    await wafer('base', undefined)
    await wafer('other', undefined)
    await wafer(stepWaferName(key), 'other', key)
    const refused = await probeStep(store, key, 'base').then(
      () => undefined,
      (error: Error) => error.message,
    )
    expect(refused).to.equal(
      `wafer ${stepWaferName(key)} is in the way of a build step: it is not that step's cached result.`,
    )
    expect(await fs.readFile(path.join(root, stepWaferName(key), 'parent'), 'utf8')).to.equal('other\n')
  })

  it("never follows or opens a claim that is not a link to a build's stage, and sweeps only dead claims", async function () {
    const claim = path.join(root, `.step-${key.slice(0, 40)}`)
    await fs.writeFile(claim, 'planted')
    const refused = await claimStep(root, key, '.create-x', () => {}).then(
      () => undefined,
      (error: Error) => error.message,
    )
    expect(refused).to.equal(
      `${claim}, the claim of a build step, is not a link to a build's staging directory; wafers neither follows nor opens it.`,
    )
    expect(await fs.readFile(claim, 'utf8')).to.equal('planted')

    const dead = path.join(root, `.step-${'d'.repeat(40)}`)
    await fs.symlink('.create-gone', dead)
    removeAbandonedClaims(root)
    expect(lstatSync(dead, {throwIfNoEntry: false})).to.equal(undefined)
    expect(await fs.readFile(claim, 'utf8')).to.equal('planted')

    await fs.rm(claim)
    const held = await claimStep(root, key, '.create-mine', () => {})
    expect(readlinkSync(claim)).to.equal('.create-mine')
    held.release()
    expect(lstatSync(claim, {throwIfNoEntry: false})).to.equal(undefined)
  })
})
