import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {traceAncestry} from '../../../src/lib/store/ancestry.js'
import {WaferStore, locationsFromEnv} from '../../../src/lib/store/store.js'

describe('wafer store', function () {
  let root: string
  let store: WaferStore

  beforeEach(async function () {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-store-'))
    store = new WaferStore(root)
  })

  afterEach(async function () {
    await fs.rm(root, {force: true, recursive: true})
  })

  it('defaults to /var/lib/wafers and /var/lib/machines, overridden by WAFERS and STACKS', function () {
    expect(locationsFromEnv({})).to.deep.equal({stacks: '/var/lib/machines', wafers: '/var/lib/wafers'})
    expect(locationsFromEnv({STACKS: '/s', WAFERS: '/w'})).to.deep.equal({stacks: '/s', wafers: '/w'})
  })

  it('reads parent files with or without a trailing newline, and an empty one as no parent', async function () {
    for (const [name, text, parent] of [
      ['a', 'base', 'base'],
      ['b', 'base\n', 'base'],
      ['c', '\n', undefined],
    ] as const) {
      await fs.mkdir(path.join(root, name, 'data'), {recursive: true})
      await fs.writeFile(path.join(root, name, 'parent'), text)
      expect(await store.readParent(name)).to.equal(parent)
    }
  })

  it('refuses a parent file of two lines or naming an invalid wafer', async function () {
    await fs.mkdir(path.join(root, 'a', 'data'), {recursive: true})
    await fs.writeFile(path.join(root, 'a', 'parent'), 'base\nother\n')
    await expectRejection(store.readParent('a'), 'the parent file of wafer a has 2 lines; it must name one wafer.')
    await fs.writeFile(path.join(root, 'a', 'parent'), '../../etc\n')
    await expectRejection(store.readParent('a'), 'the parent of wafer a, "../../etc" is not valid')
  })

  it('refuses an ancestry that loops, naming the loop', async function () {
    for (const [name, parent] of [
      ['a', 'b'],
      ['b', 'c'],
      ['c', 'b'],
    ]) {
      await fs.mkdir(path.join(root, name, 'data'), {recursive: true})
      await fs.writeFile(path.join(root, name, 'parent'), parent)
    }

    await expectRejection(traceAncestry(store, 'a'), 'the ancestry of wafer a loops: b -> c -> b.')
  })

  it('creates a wafer whole or not at all', async function () {
    await fs.mkdir(path.join(root, 'base', 'data'), {recursive: true})
    await store.create('child', 'base', {parentData: path.join(root, 'base', 'data')})
    expect((await fs.readdir(path.join(root, 'child'))).sort()).to.deep.equal(['data', 'parent', 'work'])
    await expectRejection(store.create('child', 'base'), 'wafer child was created by someone else meanwhile.')
    expect((await fs.readdir(root)).sort()).to.deep.equal(['base', 'child'])
  })
})

async function expectRejection(promise: Promise<unknown>, message: string): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (error_: Error) => error_,
  )
  expect(error?.message).to.include(message)
}
