import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {onlyRootCanRename} from '../../../src/lib/builder/step-mount.js'

describe('only root can rename in a directory (where nspawn may be given the build stage by name)', function () {
  let root: string

  beforeEach(async function () {
    // Under /tmp: sticky and writable by all, above an entry of root's.
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-rename-'))
  })

  afterEach(async function () {
    if (root) await fs.rm(root, {force: true, recursive: true})
  })

  it("holds for root's own directory in sticky /tmp, and not once anyone else may write to it or owns it", async function () {
    const store = path.join(root, 'store')
    await fs.mkdir(store, {mode: 0o755})
    expect(onlyRootCanRename(store)).to.equal(true)

    await fs.chmod(store, 0o775)
    expect(onlyRootCanRename(store)).to.equal(false)
    await fs.chmod(store, 0o755)

    await fs.chown(root, 1000, 1000)
    expect(onlyRootCanRename(store)).to.equal(false)
    await fs.chown(root, 0, 0)

    // Its real path is judged: a link from elsewhere to it changes nothing, a missing one is refused.
    await fs.symlink(store, path.join(root, 'link'))
    expect(onlyRootCanRename(path.join(root, 'link'))).to.equal(true)
    expect(onlyRootCanRename(path.join(root, 'missing'))).to.equal(false)
  })
})
