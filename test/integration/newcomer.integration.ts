// Issue #10, "a newcomer's first hour": what a new user types first must work as they expect.
import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {Sandbox, useSandbox} from '../helpers/sandbox.js'

const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))
const fixtures = fileURLToPath(new URL('../fixtures', import.meta.url))

describe("a newcomer's first hour", function () {
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  /** Runs wafers in `cwd`, as typed in a shell there. */
  async function runIn(cwd: string, args: string[]) {
    return execa(process.execPath, [bin, ...args], {cwd, env: box.env, reject: false, stdin: 'ignore'})
  }

  it('installs a plugin from a local .tgz given by a relative path, not taking it for a GitHub repository', async function () {
    await fs.cp(path.join(fixtures, 'plugin-beta'), path.join(box.root, 'beta'), {recursive: true})
    const pack = await execa('npm', ['pack', './beta'], {cwd: box.root})
    const tgz = pack.stdout.trim().split('\n').at(-1)!
    const run = await runIn(box.root, ['plugins', 'install', `./${tgz}`])
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(run.stderr).to.not.match(/github/i)
    const seeders = await box.run(['seeders', '--json'])
    expect(seeders.stdout).to.include('beta-record')
  })

  it('installs a plugin from a local directory given by an absolute path', async function () {
    await fs.cp(path.join(fixtures, 'plugin-beta'), path.join(box.root, 'beta'), {recursive: true})
    const run = await runIn('/', ['plugins', 'install', path.join(box.root, 'beta')])
    expect(run.exitCode, run.stderr).to.equal(0)
    expect((await box.run(['seeders', '--json'])).stdout).to.include('beta-record')
  })
})
