import {WafersError} from '../errors.js'

/**
 * Why a RUN may make no user namespace: it runs as the host's root (kuid 0) in the host's user
 * namespace, and in a user namespace of its own it would hold CAP_SYS_ADMIN again, enough to mount
 * a fresh procfs or sysfs (nspawn chroots into the container, so the host's fully visible /proc and
 * /sys stay in its mount namespace, which lets the kernel allow it) and, still being kuid 0, write
 * the host's sysctls there. Docker's default seccomp profile refuses the same calls.
 */
const CLONE_NEWUSER = 0x10_00_00_00
const CLONE_NEWNET = 0x40_00_00_00

const EPERM = 1
const ENOSYS = 38

// Classic BPF, as seccomp(2) runs it: struct seccomp_data has nr at 0, arch at 4, args[0] at 16.
const LD_ABS = 0x20
const JEQ = 0x15
const JGE = 0x35
const JSET = 0x45
const RET = 0x06
const ALLOW = 0x7f_ff_00_00
const errno = (code: number) => 0x00_05_00_00 | code

/**
 * System calls no RUN needs, refused with EPERM before the kernel looks at the caller's
 * capabilities, so that a capability granted by mistake, a sysctl that lets the unprivileged in
 * (unprivileged BPF, perf_event_paranoid, unprivileged userfaultfd) or a kernel bug behind the
 * capability check does not hand them to a Containerfile from the internet. Docker's default
 * profile refuses each of them too. nspawn itself runs under the filter: it needs none of these
 * (its new session keyring is a keyctl whose EPERM it ignores, and its own filter refuses keyctl
 * inside anyway).
 */
const DENIED = [
  // Joining another process's namespaces (the host's, through an inherited or passed descriptor);
  // a network namespace alone is let through (see noUserNamespaceFilter).
  'setns',
  // Opening any file of a file system by its handle, past every mount and chroot (CAP_DAC_READ_SEARCH).
  'open_by_handle_at',
  // Replacing the running kernel (CAP_SYS_BOOT).
  'kexec_load',
  'kexec_file_load',
  // Loading code into the kernel: BPF programs, modules (CAP_BPF, CAP_SYS_ADMIN, CAP_SYS_MODULE).
  'bpf',
  'init_module',
  'finit_module',
  'delete_module',
  // Watching the host's processes and kernel through performance counters.
  'perf_event_open',
  // The kernel keyrings, which no namespace separates: root's keys are the host root's keys.
  'keyctl',
  'add_key',
  'request_key',
  // Stalling the kernel on a page fault at will, the usual way to win a kernel race.
  'userfaultfd',
] as const

type Denied = (typeof DENIED)[number]

/** The system call numbers of one ABI the kernel may be entered through. */
interface Abi {
  /** AUDIT_ARCH_* as seccomp_data.arch reports it. */
  arch: number
  clone: number
  clone3: number
  /** DENIED calls by number; a call the ABI lacks (kexec_file_load on i386) is left out. */
  denied: Partial<Record<Denied, number>>
  /** Numbers at or above this belong to another ABI under the same arch value (x32 under x86_64). */
  foreignFrom?: number
  unshare: number
}

// The numbers of arch/*/entry/syscalls/syscall_*.tbl, arch/arm/tools/syscall.tbl and
// include/uapi/asm-generic/unistd.h (aarch64).
const X86_64: Abi = {
  arch: 0xc0_00_00_3e,
  clone: 56,
  clone3: 435,
  denied: {
    add_key: 248,
    bpf: 321,
    delete_module: 176,
    finit_module: 313,
    init_module: 175,
    kexec_file_load: 320,
    kexec_load: 246,
    keyctl: 250,
    open_by_handle_at: 304,
    perf_event_open: 298,
    request_key: 249,
    setns: 308,
    userfaultfd: 323,
  },
  foreignFrom: 0x40_00_00_00,
  unshare: 272,
}
const I386: Abi = {
  arch: 0x40_00_00_03,
  clone: 120,
  clone3: 435,
  denied: {
    add_key: 286,
    bpf: 357,
    delete_module: 129,
    finit_module: 350,
    init_module: 128,
    kexec_load: 283,
    keyctl: 288,
    open_by_handle_at: 342,
    perf_event_open: 336,
    request_key: 287,
    setns: 346,
    userfaultfd: 374,
  },
  unshare: 310,
}
const AARCH64: Abi = {
  arch: 0xc0_00_00_b7,
  clone: 220,
  clone3: 435,
  denied: {
    add_key: 217,
    bpf: 280,
    delete_module: 106,
    finit_module: 273,
    init_module: 105,
    kexec_file_load: 294,
    kexec_load: 104,
    keyctl: 219,
    open_by_handle_at: 265,
    perf_event_open: 241,
    request_key: 218,
    setns: 268,
    userfaultfd: 282,
  },
  unshare: 97,
}
const ARM: Abi = {
  arch: 0x40_00_00_28,
  clone: 120,
  clone3: 435,
  denied: {
    add_key: 309,
    bpf: 386,
    delete_module: 129,
    finit_module: 379,
    init_module: 128,
    kexec_file_load: 401,
    kexec_load: 347,
    keyctl: 311,
    open_by_handle_at: 371,
    perf_event_open: 364,
    request_key: 310,
    setns: 375,
    userfaultfd: 388,
  },
  unshare: 337,
}

/** The ABIs of each host architecture wafers builds on, and its prctl(2) number. */
const HOSTS: Partial<Record<NodeJS.Architecture, {abis: Abi[]; prctl: number}>> = {
  arm64: {abis: [AARCH64, ARM], prctl: 167},
  x64: {abis: [X86_64, I386], prctl: 157},
}

type Insn = [code: number, jt: number | string, jf: number | string, k: number] | string

/**
 * A seccomp filter (struct sock_filter[], as bytes) that lets every system call through except
 * those making a user namespace and those of DENIED: unshare(2) and clone(2) with CLONE_NEWUSER,
 * and every DENIED call (setns(2) unless its nstype is CLONE_NEWNET), fail with EPERM; clone3(2), whose flags a filter cannot read, with ENOSYS
 * (glibc then falls back to clone), and so does every call of an ABI the filter does not know.
 */
export function noUserNamespaceFilter(abis: Abi[] = hostAbis().abis): Buffer {
  const program: Insn[] = [[LD_ABS, 0, 0, 4]]
  for (const [index, abi] of abis.entries()) program.push([JEQ, `abi${index}`, 0, abi.arch])
  program.push([RET, 0, 0, errno(ENOSYS)])
  for (const [index, abi] of abis.entries()) {
    program.push(`abi${index}`, [LD_ABS, 0, 0, 0])
    if (abi.foreignFrom !== undefined) program.push([JGE, 'enosys', 0, abi.foreignFrom])
    program.push([JEQ, 'enosys', 0, abi.clone3], [JEQ, 'flags', 0, abi.unshare], [JEQ, 'flags', 0, abi.clone])
    for (const call of DENIED) {
      const number = abi.denied[call]
      if (number !== undefined) program.push([JEQ, call === 'setns' ? 'setns' : 'eperm', 0, number])
    }

    program.push([RET, 0, 0, ALLOW])
  }

  program.push(
    'flags',
    [LD_ABS, 0, 0, 16],
    [JSET, 'eperm', 0, CLONE_NEWUSER],
    [RET, 0, 0, ALLOW],
    // setns(fd, CLONE_NEWNET) only: nspawn's --private-network enters the RUN's new network
    // namespace so. Joining a network namespace needs CAP_SYS_ADMIN over it, which a RUN lacks,
    // and a RUN on the host's network has nothing to gain by joining it.
    'setns',
    [LD_ABS, 0, 0, 24],
    [JEQ, 0, 'eperm', CLONE_NEWNET],
    [RET, 0, 0, ALLOW],
    'eperm',
    [RET, 0, 0, errno(EPERM)],
    'enosys',
    [RET, 0, 0, errno(ENOSYS)],
  )
  return assemble(program)
}

/**
 * The program and arguments that install noUserNamespaceFilter and then exec `command`: perl,
 * which every Debian system has (perl-base is essential), since Node cannot call prctl(2). Root
 * may install a filter without PR_SET_NO_NEW_PRIVS, so setuid programs in the RUN keep working.
 */
export function withoutUserNamespaces(command: string[]): [string, string[]] {
  const {prctl} = hostAbis()
  const script = [
    'my $f = pack("H*", shift);',
    'my $prog = pack("S x![P] P", length($f) / 8, $f);',
    // PR_SET_SECCOMP, SECCOMP_MODE_FILTER.
    `syscall(${prctl}, 22, 2, $prog) == 0 or die "wafers: cannot forbid user namespaces to the RUN: $!\\n";`,
    'exec {$ARGV[0]} @ARGV or die "wafers: cannot run $ARGV[0]: $!\\n";',
  ].join(' ')
  return ['perl', ['-e', script, noUserNamespaceFilter().toString('hex'), ...command]]
}

function hostAbis(): {abis: Abi[]; prctl: number} {
  const host = HOSTS[process.arch]
  if (host === undefined) {
    throw new WafersError(
      `wafers build cannot run a RUN safely on ${process.arch}: it knows no system call numbers there.`,
    )
  }

  return host
}

/** Resolves the labels of `program` into jump offsets and packs it as struct sock_filter[]. */
function assemble(program: Insn[]): Buffer {
  const at = new Map<string, number>()
  const code: Array<Exclude<Insn, string>> = []
  for (const insn of program) {
    if (typeof insn === 'string') at.set(insn, code.length)
    else code.push(insn)
  }

  const out = Buffer.alloc(code.length * 8)
  for (const [index, [op, jt, jf, k]] of code.entries()) {
    const offset = (target: number | string) => {
      if (typeof target === 'number') return target
      const jump = (at.get(target) as number) - index - 1
      if (jump < 0 || jump > 255) throw new Error(`seccomp filter: jump to ${target} out of range`)
      return jump
    }

    out.writeUInt16LE(op, index * 8)
    out.writeUInt8(offset(jt), index * 8 + 2)
    out.writeUInt8(offset(jf), index * 8 + 3)
    out.writeUInt32LE(k >>> 0, index * 8 + 4)
  }

  return out
}
