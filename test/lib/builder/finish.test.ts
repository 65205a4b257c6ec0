import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {WafersError} from '../../../src/lib/errors.js'
import {finishBuild} from '../../../src/lib/builder/finish.js'
import {WaferStore} from '../../../src/lib/store/store.js'

describe('build: pointing NAME at the result', function () {
  let root: string
  let store: WaferStore

  /** A wafer as a build leaves it: data, parent file, meta.json with the image a build records. */
  async function wafer(name: string, parent?: string, ref = 'build:/ctx') {
    await fs.mkdir(path.join(root, name, 'data'), {recursive: true})
    await fs.mkdir(path.join(root, name, 'work'), {recursive: true})
    await fs.writeFile(path.join(root, name, 'parent'), parent === undefined ? '' : `${parent}\n`)
    await fs.writeFile(
      path.join(root, name, 'meta.json'),
      JSON.stringify({image: {architecture: 'amd64', config: {}, os: 'linux', ref}}),
    )
  }

  const end = (top: string) => ({config: {}, history: [], image: {architecture: 'amd64', os: 'linux'}, top})
  const noStage = async () => {
    throw new Error('no stage is needed to re-point NAME')
  }

  beforeEach(async function () {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-finish-'))
    store = new WaferStore(root)
    await wafer('base')
    await wafer('build-old', 'base')
    await wafer('web', 'build-old')
  })

  afterEach(async function () {
    await fs.rm(root, {force: true, recursive: true})
  })

  it('re-points NAME at the last step of a build whose every step was cached', async function () {
    await wafer('build-new', 'base')
    expect(await finishBuild(store, 'web', '/ctx', end('build-new'), noStage)).to.equal(
      'Pointed wafer web at build-new',
    )
    expect(await store.readParent('web')).to.equal('build-new')
  })

  it('refuses, leaving NAME as it was, when that last step was removed meanwhile (a prune beside the build)', async function () {
    const before = await fs.readFile(path.join(root, 'web', 'meta.json'), 'utf8')
    const error: unknown = await finishBuild(store, 'web', '/ctx', end('build-gone'), noStage).then(
      () => undefined,
      (error_: unknown) => error_,
    )

    expect(error).to.be.instanceOf(WafersError)
    expect((error as Error).message).to.equal(
      'wafer build-gone, which this build ends on, was removed while the build ran; web is left as it was: build again.',
    )
    expect(await store.readParent('web')).to.equal('build-old')
    expect(await fs.readFile(path.join(root, 'web', 'meta.json'), 'utf8')).to.equal(before)
  })

  it('says the same when that last step is half removed, its data and its base gone (an rm -r under way)', async function () {
    await wafer('build-half', 'gone-base')
    await fs.rm(path.join(root, 'build-half', 'data'), {recursive: true})
    const error: unknown = await finishBuild(store, 'web', '/ctx', end('build-half'), noStage).then(
      () => undefined,
      (error_: unknown) => error_,
    )

    expect((error as Error).message).to.equal(
      'wafer build-half, which this build ends on, was removed while the build ran; web is left as it was: build again.',
    )
    expect(await store.readParent('web')).to.equal('build-old')
  })
})
