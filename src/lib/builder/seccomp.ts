import {WafersError} from '../errors.js'

/**
 * The system call policy of a RUN, one seccomp filter that wafers installs (through perl) before
 * systemd-nspawn starts and that nspawn is told not to replace with its own (SYSTEMD_SECCOMP=0).
 *
 * It is nspawn's own allow-list, as systemd 252 (Debian 12) builds it for a RUN's capabilities,
 * refused call for call, plus wafers' own refusals. nspawn compiles its list with libseccomp at
 * every start, which took 60 of the 70 milliseconds of a bare nspawn start here; this filter is a
 * few hundred bytes built in microseconds. Being wafers' own, it is the same on every host,
 * whatever systemd the host has. test/lib/builder/seccomp.test.ts reads nspawn's filter out of a
 * running container and checks, number by number, that this one refuses at least what it refuses.
 *
 * Why a RUN may make no user namespace: it runs as the host's root (kuid 0) in the host's user
 * namespace, and in a user namespace of its own it would hold CAP_SYS_ADMIN again, enough to mount
 * a fresh procfs or sysfs (nspawn chroots into the container, so the host's fully visible /proc and
 * /sys stay in its mount namespace, which lets the kernel allow it) and, still being kuid 0, write
 * the host's sysctls there. Docker's default seccomp profile refuses the same calls.
 */
const CLONE_NEWUSER = 0x10_00_00_00
const CLONE_NEWNET = 0x40_00_00_00
const AF_NETLINK = 16
const NETLINK_AUDIT = 9

const EPERM = 1
const ENOSYS = 38
const EAFNOSUPPORT = 97

// Classic BPF, as seccomp(2) runs it: struct seccomp_data has nr at 0, arch at 4, args[i] at 16 + 8i.
const LD_ABS = 0x20
const JEQ = 0x15
const JGE = 0x35
const JSET = 0x45
const RET = 0x06
const ALLOW = 0x7f_ff_00_00
const errno = (code: number) => 0x00_05_00_00 | code

/**
 * System calls wafers itself refuses with EPERM before the kernel looks at the caller's
 * capabilities, so that a capability granted by mistake, a sysctl that lets the unprivileged in
 * (unprivileged BPF, perf_event_paranoid, unprivileged userfaultfd) or a kernel bug behind the
 * capability check does not hand them to a Containerfile from the internet. Docker's default
 * profile refuses each of them too. nspawn itself runs under the filter: it needs none of these
 * (its new session keyring is a keyctl whose EPERM it ignores).
 */
const WAFERS_REFUSES = [
  // Joining another process's namespaces (the host's, through an inherited or passed descriptor);
  // a network namespace alone is let through (see runFilter).
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
  // io_uring: a second way into most of the kernel that seccomp cannot see into, and a steady
  // source of kernel bugs. Programs fall back to plain calls (libuv, liburing's users).
  'io_uring_setup',
  'io_uring_enter',
  'io_uring_register',
] as const

/**
 * What nspawn 252's allow-list leaves out for a RUN's capabilities (besides WAFERS_REFUSES), all
 * refused with EPERM as nspawn refuses them: the groups it excludes on purpose (its sets
 * cpu-emulation, keyring, obsolete, pkey and swap; fanotify, quotactl, lookup_dcookie), those it
 * grants only with a capability a RUN lacks (the sets clock, raw-io and memlock; acct, ptrace,
 * reboot, syslog, vhangup), and the calls newer than its lists that libseccomp 2.5.4 knows by name.
 */
const NSPAWN_REFUSES = [
  'ptrace',
  'syslog',
  'vhangup',
  'acct',
  'reboot',
  'swapon',
  'swapoff',
  'mlock',
  'munlock',
  'mlockall',
  'munlockall',
  'mlock2',
  'adjtimex',
  'clock_adjtime',
  'clock_adjtime64',
  'clock_settime',
  'clock_settime64',
  'settimeofday',
  'stime',
  'iopl',
  'ioperm',
  'pciconfig_iobase',
  'pciconfig_read',
  'pciconfig_write',
  'modify_ldt',
  'vm86',
  'vm86old',
  'quotactl',
  'quotactl_fd',
  'lookup_dcookie',
  'fanotify_init',
  'fanotify_mark',
  'pkey_mprotect',
  'pkey_alloc',
  'pkey_free',
  'pidfd_getfd',
  'landlock_create_ruleset',
  'landlock_add_rule',
  'landlock_restrict_self',
  'memfd_secret',
  'process_mrelease',
  'map_shadow_stack',
  'futex_wake',
  'futex_wait',
  'futex_requeue',
  // @obsolete: gone from the kernel or never in it, refused all the same.
  'uselib',
  'ustat',
  'sysfs',
  '_sysctl',
  'create_module',
  'get_kernel_syms',
  'query_module',
  'getpmsg',
  'putpmsg',
  'afs_syscall',
  'tuxcall',
  'security',
  'vserver',
  'break',
  'stty',
  'gtty',
  'ftime',
  'prof',
  'lock',
  'mpx',
  'ulimit',
  'sgetmask',
  'ssetmask',
  'profil',
  'idle',
  'bdflush',
] as const

/** Calls nspawn 252 answers with ENOSYS: removed from the kernel, or newer than its lists. */
const NSPAWN_UNKNOWN = ['nfsservctl', 'cachestat'] as const

/**
 * From this number on every call fails with ENOSYS, on every ABI (they share their numbers from 424
 * on): calls newer than nspawn 252's lists (statmount, listmount, lsm_*, mseal, the *xattrat calls
 * and those to come), so that glibc falls back from them and a RUN sees the same calls on every
 * kernel.
 */
export const FIRST_UNKNOWN = 457

type Refused = (typeof WAFERS_REFUSES)[number] | (typeof NSPAWN_REFUSES)[number] | (typeof NSPAWN_UNKNOWN)[number]
type Call = 'clone' | 'clone3' | 'socket' | 'unshare' | Refused

/**
 * System call numbers as [x86_64, i386, aarch64, arm EABI], undefined where the ABI lacks the call
 * (or multiplexes it, as i386's socket): the tables of libseccomp (`scmp_sys_resolver -a ARCH NAME`),
 * which the tests check them against.
 */
const _ = undefined
// prettier-ignore
export const NUMBERS: Record<Call, [x86_64?: number, i386?: number, aarch64?: number, arm?: number]> = {
  clone: [56, 120, 220, 120],
  clone3: [435, 435, 435, 435],
  unshare: [272, 310, 97, 337],
  socket: [41, _, 198, 281],
  setns: [308, 346, 268, 375],
  open_by_handle_at: [304, 342, 265, 371],
  kexec_load: [246, 283, 104, 347],
  kexec_file_load: [320, _, 294, 401],
  bpf: [321, 357, 280, 386],
  init_module: [175, 128, 105, 128],
  finit_module: [313, 350, 273, 379],
  delete_module: [176, 129, 106, 129],
  perf_event_open: [298, 336, 241, 364],
  keyctl: [250, 288, 219, 311],
  add_key: [248, 286, 217, 309],
  request_key: [249, 287, 218, 310],
  userfaultfd: [323, 374, 282, 388],
  io_uring_setup: [425, 425, 425, 425],
  io_uring_enter: [426, 426, 426, 426],
  io_uring_register: [427, 427, 427, 427],
  ptrace: [101, 26, 117, 26],
  syslog: [103, 103, 116, 103],
  vhangup: [153, 111, 58, 111],
  acct: [163, 51, 89, 51],
  reboot: [169, 88, 142, 88],
  swapon: [167, 87, 224, 87],
  swapoff: [168, 115, 225, 115],
  mlock: [149, 150, 228, 150],
  munlock: [150, 151, 229, 151],
  mlockall: [151, 152, 230, 152],
  munlockall: [152, 153, 231, 153],
  mlock2: [325, 376, 284, 390],
  adjtimex: [159, 124, 171, 124],
  clock_adjtime: [305, 343, 266, 372],
  clock_adjtime64: [_, 405, _, 405],
  clock_settime: [227, 264, 112, 262],
  clock_settime64: [_, 404, _, 404],
  settimeofday: [164, 79, 170, 79],
  stime: [_, 25, _, _],
  iopl: [172, 110, _, _],
  ioperm: [173, 101, _, _],
  pciconfig_iobase: [_, _, _, 271],
  pciconfig_read: [_, _, _, 272],
  pciconfig_write: [_, _, _, 273],
  modify_ldt: [154, 123, _, _],
  vm86: [_, 166, _, _],
  vm86old: [_, 113, _, _],
  quotactl: [179, 131, 60, 131],
  quotactl_fd: [443, 443, 443, 443],
  lookup_dcookie: [212, 253, 18, 249],
  fanotify_init: [300, 338, 262, 367],
  fanotify_mark: [301, 339, 263, 368],
  pkey_mprotect: [329, 380, 288, 394],
  pkey_alloc: [330, 381, 289, 395],
  pkey_free: [331, 382, 290, 396],
  pidfd_getfd: [438, 438, 438, 438],
  landlock_create_ruleset: [444, 444, 444, 444],
  landlock_add_rule: [445, 445, 445, 445],
  landlock_restrict_self: [446, 446, 446, 446],
  memfd_secret: [447, 447, 447, _],
  process_mrelease: [448, 448, 448, 448],
  map_shadow_stack: [453, 453, 453, 453],
  futex_wake: [454, 454, 454, 454],
  futex_wait: [455, 455, 455, 455],
  futex_requeue: [456, 456, 456, 456],
  uselib: [134, 86, _, 86],
  ustat: [136, 62, _, 62],
  sysfs: [139, 135, _, 135],
  _sysctl: [156, 149, _, 149],
  create_module: [174, 127, _, _],
  get_kernel_syms: [177, 130, _, _],
  query_module: [178, 167, _, _],
  getpmsg: [181, 188, _, _],
  putpmsg: [182, 189, _, _],
  afs_syscall: [183, 137, _, _],
  tuxcall: [184, _, _, _],
  security: [185, _, _, _],
  vserver: [236, 273, _, 313],
  break: [_, 17, _, _],
  stty: [_, 31, _, _],
  gtty: [_, 32, _, _],
  ftime: [_, 35, _, _],
  prof: [_, 44, _, _],
  lock: [_, 53, _, _],
  mpx: [_, 56, _, _],
  ulimit: [_, 58, _, _],
  sgetmask: [_, 68, _, _],
  ssetmask: [_, 69, _, _],
  profil: [_, 98, _, _],
  idle: [_, 112, _, _],
  bdflush: [_, 134, _, 134],
  nfsservctl: [180, 169, 42, 169],
  cachestat: [451, 451, 451, 451],
}

/** One ABI the kernel may be entered through. */
export interface Abi {
  /** AUDIT_ARCH_* as seccomp_data.arch reports it. */
  arch: number
  /** Its column in NUMBERS. */
  column: 0 | 1 | 2 | 3
  /** Numbers at or above this belong to another ABI under the same arch value (x32 under x86_64). */
  foreignFrom?: number
  /** libseccomp's name of the ABI (scmp_sys_resolver -a). */
  name: string
  /** The ABI's private calls, [first, past the last], let through (ARM's set_tls and cacheflush). */
  private?: [number, number]
}

export const X86_64: Abi = {arch: 0xc0_00_00_3e, column: 0, foreignFrom: 0x40_00_00_00, name: 'x86_64'}
export const I386: Abi = {arch: 0x40_00_00_03, column: 1, name: 'x86'}
export const AARCH64: Abi = {arch: 0xc0_00_00_b7, column: 2, name: 'aarch64'}
export const ARM: Abi = {arch: 0x40_00_00_28, column: 3, name: 'arm', private: [0x0f_00_00, 0x0f_08_00]}

/** The ABIs of each host architecture wafers builds on, and its prctl(2) number. */
const HOSTS: Partial<Record<NodeJS.Architecture, {abis: Abi[]; prctl: number}>> = {
  arm64: {abis: [AARCH64, ARM], prctl: 167},
  x64: {abis: [X86_64, I386], prctl: 157},
}

type Insn = [code: number, jt: number | string, jf: number | string, k: number] | string

/**
 * The RUN's seccomp filter (struct sock_filter[], as bytes). Every call goes through but:
 * - unshare(2) and clone(2) with CLONE_NEWUSER, setns(2) unless its nstype is CLONE_NEWNET, and
 *   the rest of WAFERS_REFUSES and NSPAWN_REFUSES: EPERM;
 * - socket(AF_NETLINK, *, NETLINK_AUDIT): EAFNOSUPPORT, which audit's userspace takes for "audit
 *   is off" (nspawn does the same: the host's audit log is not the container's); not on i386, where
 *   glibc reaches socket through socketcall(2), whose arguments no filter can read (nor nspawn's);
 * - clone3(2), whose flags a filter cannot read: ENOSYS (glibc then falls back to clone), and so
 *   does NSPAWN_UNKNOWN, every number from FIRST_UNKNOWN on (but ARM's private calls), and every
 *   call of an ABI the filter does not know (x32 among them).
 * Each ABI's block ends in its own returns, so that no jump is longer than BPF's 255.
 */
export function runFilter(abis: Abi[] = hostAbis().abis): Buffer {
  const program: Insn[] = [[LD_ABS, 0, 0, 4]]
  for (const [index, abi] of abis.entries()) program.push([JEQ, `abi${index}`, 0, abi.arch])
  program.push([RET, 0, 0, errno(ENOSYS)])
  for (const [index, abi] of abis.entries()) {
    const label = (name: string) => `${name}${index}`
    const number = (call: Call) => NUMBERS[call][abi.column]
    program.push(label('abi'), [LD_ABS, 0, 0, 0])
    if (abi.foreignFrom !== undefined) program.push([JGE, label('enosys'), 0, abi.foreignFrom])
    if (abi.private) program.push([JGE, label('private'), 0, abi.private[0]])
    program.push([JGE, label('enosys'), 0, FIRST_UNKNOWN])
    const jumps: Array<[call: Call, to: string]> = [
      ['clone3', 'enosys'],
      ['unshare', 'flags'],
      ['clone', 'flags'],
      ['setns', 'setns'],
      ['socket', 'socket'],
      ...[...WAFERS_REFUSES, ...NSPAWN_REFUSES]
        .filter((call) => call !== 'setns')
        .map((call): [Call, string] => [call, 'eperm']),
      ...NSPAWN_UNKNOWN.map((call): [Call, string] => [call, 'enosys']),
    ]
    for (const [call, to] of jumps) {
      const nr = number(call)
      if (nr !== undefined) program.push([JEQ, label(to), 0, nr])
    }

    program.push(
      [RET, 0, 0, ALLOW],
      label('flags'),
      [LD_ABS, 0, 0, 16],
      [JSET, label('eperm'), 0, CLONE_NEWUSER],
      [RET, 0, 0, ALLOW],
      // setns(fd, CLONE_NEWNET) only: nspawn's --private-network enters the RUN's new network
      // namespace so. Joining a network namespace needs CAP_SYS_ADMIN over it, which a RUN lacks,
      // and a RUN on the host's network has nothing to gain by joining it.
      label('setns'),
      [LD_ABS, 0, 0, 24],
      [JEQ, 0, label('eperm'), CLONE_NEWNET],
      [RET, 0, 0, ALLOW],
      label('socket'),
      [LD_ABS, 0, 0, 16],
      [JEQ, 0, label('allow'), AF_NETLINK],
      [LD_ABS, 0, 0, 32],
      [JEQ, 0, label('allow'), NETLINK_AUDIT],
      [RET, 0, 0, errno(EAFNOSUPPORT)],
      // ARM's own calls (glibc sets up thread-local storage with set_tls), which nspawn allows.
      ...(abi.private ? [label('private'), [JGE, label('enosys'), 0, abi.private[1]] satisfies Insn] : []),
      label('allow'),
      [RET, 0, 0, ALLOW],
      label('eperm'),
      [RET, 0, 0, errno(EPERM)],
      label('enosys'),
      [RET, 0, 0, errno(ENOSYS)],
    )
  }

  return assemble(program)
}

/**
 * The program and arguments that install runFilter and then exec `command`: perl, which every
 * Debian system has (perl-base is essential), since Node cannot call prctl(2). Root may install a
 * filter without PR_SET_NO_NEW_PRIVS, so setuid programs in the RUN keep working. Whatever
 * `command` starts runs under it: nspawn must be started with SYSTEMD_SECCOMP=0 so that it does not
 * compile its own on top.
 */
export function underRunFilter(command: string[]): [string, string[]] {
  const {prctl} = hostAbis()
  const script = [
    'my $f = pack("H*", shift);',
    'my $prog = pack("S x![P] P", length($f) / 8, $f);',
    // PR_SET_SECCOMP, SECCOMP_MODE_FILTER.
    `syscall(${prctl}, 22, 2, $prog) == 0 or die "wafers: cannot install the RUN's system call filter: $!\\n";`,
    'exec {$ARGV[0]} @ARGV or die "wafers: cannot run $ARGV[0]: $!\\n";',
  ].join(' ')
  return ['perl', ['-e', script, runFilter().toString('hex'), ...command]]
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
