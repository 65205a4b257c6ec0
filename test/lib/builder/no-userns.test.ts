import {expect} from 'chai'
import {execa} from 'execa'

import {withoutUserNamespaces} from '../../../src/lib/builder/no-userns.js'

/** Runs `command` under the filter a RUN gets, as runInRoot starts it (real perl, real seccomp). */
async function filtered(command: string[]) {
  const [program, args] = withoutUserNamespaces(command)
  return execa(program, args, {reject: false, stdin: 'ignore'})
}

describe('build: a RUN may make no user namespace (seccomp filter)', function () {
  before(function () {
    // Root installs the filter without no_new_privs; the namespaces below are root's to make.
    if (process.getuid?.() !== 0) this.skip()
  })

  it('refuses unshare and clone with CLONE_NEWUSER, and clone3, from any program under it', async function () {
    const unshare = await filtered(['unshare', '--user', 'true'])
    expect(unshare.exitCode).to.equal(1)
    expect(unshare.stderr).to.include('Operation not permitted')
    // clone(CLONE_NEWUSER | SIGCHLD) and clone3 by number (x86_64), as an attacker without unshare would.
    const raw = await filtered([
      'perl',
      '-e',
      'syscall(56, 0x10000011, 0, 0, 0, 0); print "clone $!\\n"; syscall(435, 0, 0); print "clone3 $!\\n"',
    ])
    if (process.arch === 'x64')
      expect(raw.stdout).to.equal('clone Operation not permitted\nclone3 Function not implemented')
  })

  it('lets through the namespaces nspawn makes, and threads and processes (glibc falls back from clone3)', async function () {
    const mount = await filtered(['unshare', '--mount', '--pid', '--fork', '--uts', '--ipc', 'true'])
    expect(mount.exitCode, mount.stderr).to.equal(0)
    const threads = await filtered([
      process.execPath,
      '-e',
      "const {Worker} = require('node:worker_threads'); new Worker('process.exit(0)', {eval: true}).on('exit', () => console.log('thread ran'))",
    ])
    expect(threads.stdout, threads.stderr).to.equal('thread ran')
  })
})
