import {expect} from 'chai'
import {spawn} from 'node:child_process'
import {readFileSync} from 'node:fs'

import {readProcFile} from '../../../src/lib/host/files.js'

describe('reading /proc files', function () {
  it('reads a /proc file to its end though its size says 0, at most the bytes asked for', async function () {
    // A sleeping child's environment: stable, and longer than one 4096-byte read.
    const child = spawn('sleep', ['30'], {env: {BIG: 'x'.repeat(10_000)}, stdio: 'ignore'})
    try {
      const file = `/proc/${child.pid}/environ`
      const whole = readFileSync(file, 'utf8')
      expect(whole.length).to.be.greaterThan(10_000)
      expect(readProcFile(file, 16 * 1024 * 1024)).to.equal(whole)
      expect(readProcFile(file, 5)).to.equal('BIG=x')
      expect(readProcFile(`/proc/${child.pid}/comm`)).to.equal('sleep\n')
    } finally {
      child.kill()
    }
  })

  it('is undefined for a process that is gone', function () {
    expect(readProcFile('/proc/4194305/comm')).to.equal(undefined)
  })
})
