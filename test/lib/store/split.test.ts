import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {WafersError} from '../../../src/lib/errors.js'
import {splitWafer} from '../../../src/lib/store/split.js'
import {WaferStore} from '../../../src/lib/store/store.js'

// The layer wafer a pull would name: any valid name does here.
const LAYER = 'layer-0123456789ab'
const META = {layer: {chainId: `sha256:${'1'.repeat(64)}`, diffId: `sha256:${'2'.repeat(64)}`}}

describe('split: a wafer split in two keeps what its stack shows', function () {
  let root: string
  let host: string
  let store: WaferStore

  beforeEach(async function () {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-split-'))
    host = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-host-'))
    store = new WaferStore(root)
    await fs.mkdir(path.join(root, 'w', 'work'), {recursive: true})
    await fs.mkdir(path.join(root, 'w', 'data', 'srv'), {recursive: true})
    await fs.writeFile(path.join(root, 'w', 'data', 'srv', 'app'), 'app\n')
  })

  afterEach(async function () {
    await fs.rm(root, {force: true, recursive: true})
    await fs.rm(host, {force: true, recursive: true})
  })

  const tree = async (dir: string) => (await fs.readdir(dir, {recursive: true})).sort()

  it("gives the new wafer the files and the wafer its emptied machine id whole, with its directory's mode", async function () {
    const etc = path.join(root, 'w', 'data', 'etc')
    await fs.mkdir(etc, {mode: 0o750})
    await fs.chmod(etc, 0o750)
    await fs.writeFile(path.join(etc, 'machine-id'), 'c0ffee\n')
    const mtimeNs = String((await fs.lstat(path.join(etc, 'machine-id'), {bigint: true})).mtimeNs)
    await splitWafer(store, {below: LAYER, emptied: [{mtimeNs, path: 'etc/machine-id'}], wafer: 'w'}, META)
    expect(await tree(path.join(root, LAYER, 'data'))).to.deep.equal(['etc', 'etc/machine-id', 'srv', 'srv/app'])
    expect(await tree(path.join(root, 'w', 'data'))).to.deep.equal(['etc', 'etc/machine-id'])
    expect(await fs.readFile(path.join(root, 'w', 'data', 'etc', 'machine-id'), 'utf8')).to.equal('c0ffee\n')
    expect(await fs.readFile(path.join(root, LAYER, 'data', 'etc', 'machine-id'), 'utf8')).to.equal('')
    expect((await fs.stat(path.join(root, 'w', 'data', 'etc'))).mode & 0o7777).to.equal(0o750)
    expect((await fs.readFile(path.join(root, 'w', 'parent'), 'utf8')).trim()).to.equal(LAYER)
  })

  it("refuses, changing nothing, when a directory on the way is a symlink to the host's files", async function () {
    // What a writer to $WAFERS could swap in between dedupe's checks and the copy.
    await fs.writeFile(path.join(host, 'machine-id'), 'the host machine id\n')
    await fs.symlink(host, path.join(root, 'w', 'data', 'etc'))
    const before = await tree(root)
    const split = splitWafer(store, {below: LAYER, emptied: [{mtimeNs: '0', path: 'etc/machine-id'}], wafer: 'w'}, META)
    const error = await split.then(
      () => undefined,
      (error: unknown) => error,
    )
    expect(error).to.be.instanceOf(WafersError)
    expect((error as Error).message).to.equal(
      `${path.join(root, 'w', 'data', 'etc/machine-id')} is not reached through directories alone; nothing was changed.`,
    )
    expect(await tree(root)).to.deep.equal(before)
    expect(await fs.readFile(path.join(host, 'machine-id'), 'utf8')).to.equal('the host machine id\n')
  })

  it('refuses, changing nothing, when the file to keep whole is a symlink or has another name', async function () {
    await fs.mkdir(path.join(root, 'w', 'data', 'etc'))
    await fs.writeFile(path.join(host, 'machine-id'), 'the host machine id\n')
    await fs.symlink(path.join(host, 'machine-id'), path.join(root, 'w', 'data', 'etc', 'machine-id'))
    const before = await tree(root)
    const plan = {below: LAYER, emptied: [{mtimeNs: '0', path: 'etc/machine-id'}], wafer: 'w'}
    const message = async () =>
      splitWafer(store, plan, META).then(
        () => 'split',
        (error: unknown) => (error as Error).message,
      )
    expect(await message()).to.match(/etc\/machine-id is no longer a file; nothing was changed\.$/)
    expect(await tree(root)).to.deep.equal(before)
    await fs.unlink(path.join(root, 'w', 'data', 'etc', 'machine-id'))
    await fs.writeFile(path.join(root, 'w', 'data', 'etc', 'machine-id'), 'id\n')
    await fs.link(path.join(root, 'w', 'data', 'etc', 'machine-id'), path.join(root, 'w', 'data', 'srv', 'id'))
    const linked = await tree(root)
    expect(await message()).to.match(/etc\/machine-id is no longer a file with one name; nothing was changed\.$/)
    expect(await tree(root)).to.deep.equal(linked)
  })
})
