import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {checkOverlayfs, checkUpperFilesystem} from '../../../src/lib/host/system.js'

describe('system checks', function () {
  let dir: string

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-system-'))
  })

  afterEach(async function () {
    await fs.rm(dir, {force: true, recursive: true})
  })

  it('says so in one sentence, with what to do, when the kernel has no overlayfs', async function () {
    await fs.writeFile(path.join(dir, 'filesystems'), 'nodev\tsysfs\nnodev\ttmpfs\n\text4\n')
    const error = await checkOverlayfs(path.join(dir, 'filesystems'), path.join(dir, 'no-module')).then(
      () => undefined,
      (error_: Error & {suggestions: string[]}) => error_,
    )
    expect(error?.message).to.equal(
      'this kernel has no overlayfs, which wafers needs for stacks of more than one wafer.',
    )
    expect(error?.suggestions[0]).to.include('modprobe overlay')
  })

  it('accepts a kernel that lists overlay', async function () {
    await fs.writeFile(path.join(dir, 'filesystems'), 'nodev\tsysfs\nnodev\toverlay\n')
    await checkOverlayfs(path.join(dir, 'filesystems'), path.join(dir, 'no-module'))
  })

  it("accepts $WAFERS on this machine's temp file system", async function () {
    await checkUpperFilesystem(dir)
  })
})
