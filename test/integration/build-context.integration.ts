import {expect} from 'chai'
import {execa} from 'execa'
import {randomBytes} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {budIntoBundle} from '../helpers/buildah.js'
import {Sandbox, useSandbox} from '../helpers/sandbox.js'

/** Every path under `root/dir`, relative to root, sorted. */
async function paths(root: string, dir: string): Promise<string[]> {
  const found: string[] = []
  const walk = async (rel: string) => {
    for (const name of (await fs.readdir(path.join(root, rel))).sort()) {
      const child = path.join(rel, name)
      found.push(child)
      if ((await fs.lstat(path.join(root, child))).isDirectory()) await walk(child)
    }
  }

  await walk(dir)
  return found
}

describe('a build context as .dockerignore leaves it, the same as buildah bud', function () {
  this.timeout(5 * 60 * 1000)
  let box: Sandbox
  let work: string
  useSandbox((made) => {
    box = made
  })

  beforeEach(async () => {
    // buildah's oci: transport wants a lower-case path.
    work = path.join('/tmp', `wafers-context-${randomBytes(6).toString('hex')}`)
    await fs.mkdir(work)
  })

  afterEach(async () => {
    await execa('umount', ['-R', '-l', path.join(work, 'root')], {reject: false})
    await fs.rm(work, {force: true, recursive: true})
  })

  it('`*` with `!` exceptions sends the context with only the kept files, directories kept for what they hold', async () => {
    const context = path.join(work, 'context')
    for (const dir of ['dir/deeper', 'gone']) await fs.mkdir(path.join(context, dir), {recursive: true})
    for (const file of ['keep', 'other', 'dir/inner', 'dir/skip', 'dir/deeper/kept-too', 'gone/x']) {
      await fs.writeFile(path.join(context, file), `${file}\n`)
    }

    await fs.writeFile(path.join(context, '.dockerignore'), '*\n!keep\n!dir/inner\n!dir/deeper\n')
    await fs.writeFile(path.join(context, 'Containerfile'), 'FROM scratch\nCOPY . /app/\n')

    const bundle = await budIntoBundle(work, context)

    const build = await box.run(['build', '-t', 'web', context])
    expect(build.exitCode, build.stderr).to.equal(0)
    expect((await box.run(['stack', 'web'])).exitCode).to.equal(0)
    const ours = await paths(box.stack('web'), 'app')
    expect(ours).to.deep.equal(await paths(path.join(bundle, 'rootfs'), 'app'))
    expect(ours).to.include.members(['app/keep', 'app/dir/inner', 'app/dir/deeper/kept-too'])
    expect(ours).to.not.include.members(['app/other', 'app/dir/skip', 'app/gone'])
  })
})
