import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {Sandbox, said, snapshot, useSandbox} from '../helpers/sandbox.js'

const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))

/**
 * Runs `wafers ARGS` with `input` piped to its stdin, as `echo input | wafers ARGS` would. oclif
 * gives a pipe 10 ms to close, which a loaded machine may miss: a preload hands oclif the input as
 * already read (its stdin cache), so that a command that reads an argument from stdin always does.
 */
async function piped(box: Sandbox, input: string, args: string[]) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-stdin-'))
  const preload = path.join(dir, 'stdin-read.mjs')
  await fs.writeFile(preload, `globalThis.oclif = {...globalThis.oclif, stdinCache: ${JSON.stringify(input)}}\n`)
  const result = await execa(process.execPath, [bin, ...args], {
    env: {...box.env, NODE_OPTIONS: `--import=${preload}`},
    input,
    reject: false,
  }).finally(() => fs.rm(dir, {force: true, recursive: true}))
  return {exitCode: result.exitCode ?? -1, stderr: said(result.stderr), stdout: result.stdout}
}

describe('stdin is never a missing argument', function () {
  this.timeout(120_000)
  let box: Sandbox

  useSandbox((created) => {
    box = created
  })

  it('`echo kid | wafers rm --yes` removes nothing and says the name is missing', async function () {
    await box.wafer('kid')
    const before = await snapshot(box.wafers)
    const run = await piped(box, 'kid\n', ['rm', '--yes'])
    expect(run.exitCode).to.not.equal(0)
    expect(run.stderr).to.match(/missing 1 required arg: name/i)
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  it('`wafers stack img` in a `while read` loop stacks an existing img and leaves the loop its input', async function () {
    await box.wafer('base', {files: {'etc/os-release': 'ID=base\n'}})
    await box.wafer('img', {parent: 'base'})
    // The loop reads names line by line from the pipe that wafers inherits as its stdin.
    const loop = await execa(
      'bash',
      ['-c', `while read -r line; do "${process.execPath}" "${bin}" stack img >/dev/null; echo "read $line"; done`],
      {env: box.env, input: 'one\ntwo\nthree\n', reject: false},
    )
    expect(loop.exitCode, loop.stderr).to.equal(0)
    expect(loop.stdout.split('\n')).to.deep.equal(['read one', 'read two', 'read three'])
    expect(await box.mountOf('img')).to.not.equal(undefined)
  })

  it('`echo base | wafers stack img` does not take the piped text as the parent of a new img', async function () {
    await box.wafer('base')
    const before = await snapshot(box.wafers)
    const run = await piped(box, 'base\n', ['stack', 'img'])
    expect(run.exitCode).to.not.equal(0)
    expect(run.stderr).to.include('img')
    expect(await snapshot(box.wafers)).to.deep.equal(before)
  })

  for (const args of [['create'], ['push'], ['push', 'kid'], ['pull'], ['diff'], ['enable'], ['unstack']]) {
    it(`\`echo kid | wafers ${args.join(' ')}\` refuses for the missing argument, changing nothing`, async function () {
      await box.wafer('kid')
      const before = await snapshot(box.root)
      const run = await piped(box, 'kid\n', args)
      expect(run.exitCode).to.equal(2)
      expect(run.stderr).to.match(/missing \d required args?:/i)
      expect(await snapshot(box.root)).to.deep.equal(before)
    })
  }
})
