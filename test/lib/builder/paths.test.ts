import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {resolveInRoot} from '../../../src/lib/builder/paths.js'

describe('resolveInRoot: paths inside an image, as a chrooted process sees them', () => {
  let root: string

  before(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-paths-'))
    await fs.mkdir(path.join(root, 'usr/lib'), {recursive: true})
    await fs.symlink('usr/lib', path.join(root, 'lib'))
    await fs.symlink('/etc', path.join(root, 'usr/etc-abs'))
    await fs.symlink('../../../../../../../etc', path.join(root, 'usr/lib/up'))
    await fs.symlink('loop-b', path.join(root, 'loop-a'))
    await fs.symlink('loop-a', path.join(root, 'loop-b'))
  })

  after(async () => {
    await fs.rm(root, {force: true, recursive: true})
  })

  it('follows the image own links within the image', () => {
    expect(resolveInRoot(root, '/lib/x')).to.equal(path.join(root, 'usr/lib/x'))
    expect(resolveInRoot(root, 'lib')).to.equal(path.join(root, 'usr/lib'))
  })

  it('starts an absolute target again at the root, and stops .. there: nothing leads out', () => {
    expect(resolveInRoot(root, '/usr/etc-abs/passwd')).to.equal(path.join(root, 'etc/passwd'))
    expect(resolveInRoot(root, '/usr/lib/up/passwd')).to.equal(path.join(root, 'etc/passwd'))
    expect(resolveInRoot(root, '/../../../etc/shadow')).to.equal(path.join(root, 'etc/shadow'))
  })

  it('leaves the last component alone when asked, and refuses a loop in one sentence', () => {
    expect(resolveInRoot(root, '/lib', false)).to.equal(path.join(root, 'lib'))
    expect(() => resolveInRoot(root, '/loop-a/x')).to.throw('too many symbolic links resolving /loop-a/x.')
  })
})
