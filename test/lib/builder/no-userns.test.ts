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

  it('refuses setns, kernel code, keyrings and the rest of its list with EPERM, where root may otherwise call them', async function () {
    if (process.arch !== 'x64') this.skip()
    // Each by number (x86_64), with arguments the kernel refuses harmlessly after its capability
    // check (a bad descriptor, a bad address, bad flags): unfiltered, root gets EBADF, EFAULT,
    // EINVAL and the like, never EPERM.
    const calls: Array<[name: string, call: string]> = [
      ['setns', '308, -1, 0'],
      ['open_by_handle_at', '304, -1, 0, 0'],
      ['kexec_load', '246, 0, 0, 0, 0xdead0000'],
      ['kexec_file_load', '320, -1, -1, 0, 0, 0xffffffff'],
      ['bpf', '321, -1, 0, 0'],
      ['init_module', '175, 0, 0, 0'],
      ['finit_module', '313, -1, $empty, 0'],
      ['delete_module', '176, 0, 0'],
      ['perf_event_open', '298, 0, 0, -1, -1, 0'],
      ['keyctl', '250, -1, 0, 0, 0, 0'],
      ['add_key', '248, 0, 0, 0, 0, 0'],
      ['request_key', '249, 0, 0, 0, 0'],
      ['userfaultfd', '323, 0xffffffff'],
    ]
    const script =
      'my $empty = ""; ' +
      calls.map(([name, call]) => `$! = 0; syscall(${call}); print "${name} ", $!+0, "\\n";`).join(' ')
    const errnos = (stdout: string) => Object.fromEntries(stdout.split('\n').map((line) => line.split(' ')))
    const bare = errnos((await execa('perl', ['-e', script])).stdout)
    const under = errnos((await filtered(['perl', '-e', script])).stdout)
    const EPERM = '1'
    expect(Object.keys(under)).to.deep.equal(calls.map(([name]) => name))
    for (const [name] of calls) expect(under[name], name).to.equal(EPERM)
    // The refusal is the filter's: root's own call of setns goes through to the descriptor check.
    expect(bare.setns).to.not.equal(EPERM)
    // And a real setns, into the namespace it is already in, works for root but not under it.
    const nsenter = ['nsenter', '--mount=/proc/self/ns/mnt', 'true']
    expect((await execa(nsenter[0], nsenter.slice(1), {reject: false})).exitCode).to.equal(0)
    const joined = await filtered(nsenter)
    expect(joined.exitCode).to.not.equal(0)
    expect(joined.stderr).to.include('Operation not permitted')
    // Save a network namespace, which nspawn's --private-network enters (and which needs CAP_SYS_ADMIN over it).
    const net = await filtered(['nsenter', '--net=/proc/self/ns/net', 'true'])
    expect(net.exitCode, net.stderr).to.equal(0)
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
