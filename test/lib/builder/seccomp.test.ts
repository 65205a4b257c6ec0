import {expect} from 'chai'
import {execa} from 'execa'

import {readFileSync, readdirSync} from 'node:fs'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'

import {DROP_CAPABILITIES} from '../../../src/lib/builder/run.js'
import {
  AARCH64,
  ARM,
  FIRST_UNKNOWN,
  I386,
  NUMBERS,
  X86_64,
  runFilter,
  underRunFilter,
} from '../../../src/lib/builder/seccomp.js'

/** Runs `command` under the filter a RUN gets, as runInRoot starts it (real perl, real seccomp). */
async function filtered(command: string[]) {
  const [program, args] = underRunFilter(command)
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
      ['io_uring_setup', '425, 0, 0'],
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

interface Machine {
  a: number
  memory: number[]
  x: number
}

/** The classic BPF instructions libseccomp and wafers emit, but the returns and jumps. */
const STEPS: Record<number, (machine: Machine, k: number, data: Buffer) => void> = {
  0x00(machine, k) {
    machine.a = k
  },
  0x01(machine, k) {
    machine.x = k
  },
  0x02(machine, k) {
    machine.memory[k] = machine.a
  },
  0x03(machine, k) {
    machine.memory[k] = machine.x
  },
  0x07(machine) {
    machine.x = machine.a
  },
  0x20(machine, k, data) {
    machine.a = data.readUInt32LE(k)
  },
  0x54(machine, k) {
    machine.a = (machine.a & k) >>> 0
  },
  0x60(machine, k) {
    machine.a = machine.memory[k]
  },
  0x61(machine, k) {
    machine.x = machine.memory[k]
  },
  0x87(machine) {
    machine.a = machine.x
  },
}

/** Conditional jumps by opcode: whether to take the true branch. */
const CONDITIONS: Record<number, (machine: Machine, k: number) => boolean> = {
  0x15: (machine, k) => machine.a === k,
  0x1d: (machine) => machine.a === machine.x,
  0x25: (machine, k) => machine.a > k,
  0x35: (machine, k) => machine.a >= k,
  0x45: (machine, k) => (machine.a & k) !== 0,
}

/** Classic BPF as seccomp runs it, on one struct seccomp_data: what the filter returns. */
function evaluate(filter: Buffer, data: Buffer): number {
  const machine: Machine = {a: 0, memory: Array.from<number>({length: 16}).fill(0), x: 0}
  for (let pc = 0; ;) {
    const [code, jt, jf, k] = [
      filter.readUInt16LE(pc * 8),
      filter[pc * 8 + 2],
      filter[pc * 8 + 3],
      filter.readUInt32LE(pc * 8 + 4),
    ]
    pc++
    if (code === 0x06) return k
    if (code === 0x16) return machine.a
    if (code === 0x05) pc += k
    else if (CONDITIONS[code]) pc += CONDITIONS[code](machine, k) ? jt : jf
    else if (STEPS[code]) STEPS[code](machine, k, data)
    else throw new Error(`BPF op 0x${code.toString(16)} at ${pc - 1}`)
  }
}

/** What seccomp makes of `filters` (the newest first) for one call: the strictest action wins. */
function verdict(filters: Buffer[], nr: number, arch: number, args: number[] = []): number {
  const data = Buffer.alloc(64)
  data.writeUInt32LE(nr >>> 0, 0)
  data.writeUInt32LE(arch, 4)
  for (const [index, arg] of args.entries()) data.writeUInt32LE(arg, 16 + 8 * index)
  const rank = (action: number) => {
    const order = [
      0x80_00_00_00, 0, 0x00_03_00_00, 0x00_05_00_00, 0x7f_c0_00_00, 0x7f_f0_00_00, 0x7f_fc_00_00, 0x7f_ff_00_00,
    ]
    return order.indexOf((action & 0xff_ff_00_00) >>> 0)
  }

  let best: number | undefined
  for (const filter of filters) {
    const action = evaluate(filter, data)
    if (best === undefined || rank(action) < rank(best)) best = action
  }

  return best as number
}

// Reads every seccomp filter of process argv[1] (PTRACE_SECCOMP_GET_FILTER, root only), oldest
// first, as lines of hex: python's ctypes, so that the test needs no compiler.
const DUMP_FILTERS = `
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = int(sys.argv[1])
if libc.ptrace(16, pid, None, None) != 0: sys.exit("attach: " + os.strerror(ctypes.get_errno()))
os.waitpid(pid, 0x40000000)
index = 0
while True:
    count = libc.ptrace(0x420c, pid, index, None)
    if count < 0: break
    buffer = ctypes.create_string_buffer(count * 8)
    libc.ptrace(0x420c, pid, index, buffer)
    print(buffer.raw.hex())
    index += 1
libc.ptrace(17, pid, None, None)
`

describe('build: the RUN filter refuses what systemd-nspawn refuses', function () {
  this.timeout(60_000)

  it("numbers every call as libseccomp's tables do, on each ABI", async function () {
    const resolver = await execa('scmp_sys_resolver', ['-h'], {reject: false})
    // .ci/run installs the seccomp package; elsewhere the test needs it too.
    if (resolver.failed && resolver.exitCode === undefined && !process.env.CI) this.skip()
    for (const [call, numbers] of Object.entries(NUMBERS)) {
      for (const abi of [X86_64, I386, AARCH64, ARM]) {
        const resolved = Number((await execa('scmp_sys_resolver', ['-a', abi.name, call])).stdout)
        const ours = numbers[abi.column]
        expect(ours ?? 'none', `${call} on ${abi.name}`).to.equal(resolved < 0 ? 'none' : resolved)
      }
    }
  })

  it('on an arm64 host: refuses the same calls by their numbers there, and lets ARM set up its threads', function () {
    const filter = runFilter([AARCH64, ARM])
    const [ALLOW, EPERM, ENOSYS] = [0x7f_ff_00_00, 0x00_05_00_01, 0x00_05_00_26]
    const on = (abi: typeof ARM, nr: number, args: number[] = []) => verdict([filter], nr, abi.arch, args)
    // ptrace, swapon, io_uring_setup; read and openat go through.
    expect([117, 224, 425, 63, 56].map((nr) => on(AARCH64, nr))).to.deep.equal([EPERM, EPERM, EPERM, ALLOW, ALLOW])
    expect([26, 87, 425, 3, 322].map((nr) => on(ARM, nr))).to.deep.equal([EPERM, EPERM, EPERM, ALLOW, ALLOW])
    // unshare(CLONE_NEWUSER) and clone3; the audit socket.
    expect(on(AARCH64, 97, [0x10_00_00_00])).to.equal(EPERM)
    expect(on(ARM, 435)).to.equal(ENOSYS)
    expect(on(AARCH64, 198, [16, 3, 9])).to.equal(0x00_05_00_61)
    // ARM's private calls: cacheflush and set_tls (glibc's start-up) go through, the rest of the
    // numbers past the known ones do not.
    expect([0x0f_00_02, 0x0f_00_05].map((nr) => on(ARM, nr))).to.deep.equal([ALLOW, ALLOW])
    expect([0x0f_08_00, FIRST_UNKNOWN].map((nr) => on(ARM, nr))).to.deep.equal([ENOSYS, ENOSYS])
    expect(on(AARCH64, 0x0f_00_05)).to.equal(ENOSYS)
  })

  it("refuses every call nspawn's own filter refuses a RUN, with the same errno, on x86_64 and i386", async function () {
    if (process.arch !== 'x64' || process.getuid?.() !== 0) this.skip()
    // A root nspawn takes: the host's static busybox and an os-release.
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-seccomp-'))
    await fs.mkdir(path.join(root, 'bin'))
    await fs.mkdir(path.join(root, 'usr/lib'), {recursive: true})
    await fs.copyFile('/bin/busybox', path.join(root, 'bin/busybox'))
    await fs.writeFile(path.join(root, 'usr/lib/os-release'), 'ID=wafers-test\n')
    // nspawn as a RUN starts it, but with its own filter (no SYSTEMD_SECCOMP=0, no filter of wafers').
    const container = execa(
      'systemd-nspawn',
      [
        '--register=no',
        '--keep-unit',
        '--quiet',
        '--console=pipe',
        '--resolv-conf=off',
        '--timezone=off',
        '--link-journal=no',
        DROP_CAPABILITIES,
        '-D',
        root,
        '/bin/busybox',
        'sleep',
        '120',
      ],
      {env: {SYSTEMD_NSPAWN_LOCK: '0'}, reject: false, stdin: 'ignore'},
    )
    let payload: number | undefined
    try {
      payload = await waitForDescendant(container.pid as number, ['/bin/busybox', 'sleep', '120'])
      const dumped = await execa('python3', ['-c', DUMP_FILTERS, String(payload)])
      // PTRACE_SECCOMP_GET_FILTER counts from the oldest filter; seccomp runs the newest first.
      const theirs = dumped.stdout
        .split('\n')
        .map((hex) => Buffer.from(hex, 'hex'))
        .reverse()
      // nspawn's filter, not one the test inherited: it refuses ptrace, which root may otherwise call.
      expect(verdict(theirs, 101, X86_64.arch), 'nspawn refuses ptrace').to.equal(0x00_05_00_01)
      const ours = [runFilter()]
      const ALLOW = 0x7f_ff_00_00
      const ENOSYS = 0x00_05_00_26
      // Refused by wafers on purpose where nspawn 252 lets them through (clone3 with ENOSYS, for
      // glibc to fall back to clone, whose flags the filter reads).
      const extra = new Set(['clone3', 'io_uring_enter', 'io_uring_register', 'io_uring_setup', 'setns', 'userfaultfd'])
      // Numbers the kernel assigns no call to, which it answers with ENOSYS whatever the filter says.
      const assigned = (header: string) =>
        new Set(
          [...readFileSync(header, 'utf8').matchAll(/^#define __NR_\w+ (\d+)$/gm)].map((match) => Number(match[1])),
        )
      const kernel = {
        [I386.name]: assigned('/usr/include/x86_64-linux-gnu/asm/unistd_32.h'),
        [X86_64.name]: assigned('/usr/include/x86_64-linux-gnu/asm/unistd_64.h'),
      }
      const differences: string[] = []
      for (const abi of [X86_64, I386]) {
        const named = new Map(Object.entries(NUMBERS).map(([call, numbers]) => [numbers[abi.column], call]))
        for (let nr = 0; nr < 600; nr++) {
          const [nspawnSays, weSay] = [verdict(theirs, nr, abi.arch), verdict(ours, nr, abi.arch)]
          if (nspawnSays === weSay) continue
          const call = named.get(nr) ?? String(nr)
          if (nspawnSays === ALLOW && extra.has(call)) continue
          if (nspawnSays === ENOSYS && weSay === ALLOW && nr < FIRST_UNKNOWN && !kernel[abi.name].has(nr)) continue
          differences.push(
            `${call} on ${abi.name}: nspawn 0x${nspawnSays.toString(16)}, wafers 0x${weSay.toString(16)}`,
          )
        }
      }

      expect(differences).to.deep.equal([])
      // The audit socket, which nspawn answers with EAFNOSUPPORT, and any other netlink socket.
      for (const args of [
        [16, 3, 9],
        [16, 3, 0],
        [1, 1, 0],
      ])
        expect(verdict(ours, 41, X86_64.arch, args), String(args)).to.equal(verdict(theirs, 41, X86_64.arch, args))
      // x32, which nspawn half allows, is refused whole.
      expect(verdict(ours, 0x40_00_00_00 | 1, X86_64.arch)).to.equal(ENOSYS)
    } finally {
      // The payload first: it is the container's PID 1, and holds nspawn's pipes open.
      if (payload) process.kill(payload, 'SIGKILL')
      container.kill('SIGKILL')
      await container
      await fs.rm(root, {force: true, recursive: true})
    }
  })
})

/** The pid of the process below `ancestor` whose command line is `argv`, once nspawn has started it. */
async function waitForDescendant(ancestor: number, argv: string[]): Promise<number> {
  const cmdline = argv.map((arg) => `${arg}\u0000`).join('')
  const read = (file: string) => {
    try {
      return readFileSync(file, 'latin1')
    } catch {
      return ''
    }
  }

  const parent = (pid: number) => {
    const stat = read(`/proc/${pid}/stat`)
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
  }

  const below = (pid: number) => {
    for (let current = pid; current > 1; current = parent(current)) if (current === ancestor) return true
    return false
  }

  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    const found = readdirSync('/proc').find(
      (entry) => /^\d+$/.test(entry) && read(`/proc/${entry}/cmdline`) === cmdline && below(Number(entry)),
    )
    if (found) return Number(found)
    await new Promise((resolve) => {
      setTimeout(resolve, 50)
    })
  }

  throw new Error(`nspawn started no ${argv.join(' ')}`)
}
