import {expect} from 'chai'

import {WafersError} from '../../../src/lib/errors.js'
import {findOnPath, run} from '../../../src/lib/host/run.js'

/** The sentence `promise` is refused with. */
async function refusal(promise: Promise<unknown>): Promise<string> {
  try {
    await promise
  } catch (error) {
    expect(error).to.be.instanceOf(WafersError)
    return (error as Error).message
  }

  throw new Error('expected a refusal')
}

describe('run', function () {
  it('returns what the program printed, one final newline cut, as execa did', async function () {
    expect(await run('printf', ['a\\n\\n'])).to.deep.equal({stderr: '', stdout: 'a\n'})
    expect(await run('printf', ['a\\r\\n'])).to.deep.equal({stderr: '', stdout: 'a'})
  })

  it('gives the program no standard input', async function () {
    expect((await run('cat', [])).stdout).to.equal('')
  })

  it('refuses a failure with the last line the program said, or how it ended', async function () {
    expect(await refusal(run('ls', ['/nonexistent-wafers-test']))).to.match(
      /^ls failed: \S*ls: cannot access '\/nonexistent-wafers-test': No such file or directory$/,
    )
    expect(await refusal(run('false', []))).to.equal('false failed: exited with code 1')
  })

  it('says a program is missing, and an argument Node cannot pass, in a sentence', async function () {
    expect(await refusal(run('wafers-no-such-program', []))).to.equal(
      'wafers-no-such-program is not installed or not on PATH.',
    )
    expect(await refusal(run('printf', ['a\0b']))).to.match(/^printf could not be started: .+\.$/)
  })
})

describe('findOnPath', function () {
  it('finds the first executable the accept function takes, as found (no link followed)', function () {
    const all = findOnPath('sh', '/usr/bin:/bin')
    expect(all).to.equal('/usr/bin/sh')
    expect(findOnPath('sh', '/usr/bin:/bin', (found) => !found.startsWith('/usr/'))).to.equal('/bin/sh')
    expect(findOnPath('sh', '/usr/bin:/bin', () => false)).to.equal(undefined)
  })
})
