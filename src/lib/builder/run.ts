import {randomBytes} from 'node:crypto'
import {type Stats, promises as fs, lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {runStreaming} from '../host/run.js'
import {loadXattr} from '../host/xattr.js'
import {lookup} from '../layer/lookup.js'
import {MAX_OPTIONS_LENGTH} from '../mount/overlay.js'
import {staticBusyboxWith} from '../seed/seeders/busybox.js'
import {stagingLockFds} from '../store/staging.js'
import {underRunFilter} from './seccomp.js'
import type {Bind} from './run-mounts.js'
import type {RunAs} from './users.js'

/** The network a RUN gets, as buildah and podman spell `--network`. */
export type RunNetwork = 'host' | 'none'

/** How one RUN step runs. */
export interface RunSpec {
  /** The argument vector (exec form, or the shell and its `-c` plus the command line). */
  argv: string[]
  /** Host paths bound into the RUN (RUN --mount). */
  binds?: Bind[]
  /** The environment: the image's Env and the build args in scope, `KEY=VALUE`. */
  env: string[]
  /** `host` (the default, as buildah's chroot isolation): the host's network; `none`: loopback only. */
  network?: RunNetwork
  /** Who runs it (see runAs); root when undefined. */
  user?: RunAs
  workdir?: string
}

/**
 * The capabilities a RUN keeps, as buildah's chroot isolation keeps them (containers.conf's
 * default_capabilities): what dpkg, apt, rpm and useradd use to unpack files with their owners and
 * modes, set file capabilities and switch users. Without a user namespace the RUN is the host's
 * root, so everything else goes: CAP_SYS_ADMIN (mounting a fresh procfs or sysfs and writing the
 * host's sysctls), CAP_MKNOD (a node for the host's disk), CAP_DAC_READ_SEARCH (open_by_handle_at
 * reaches any host file), CAP_SYS_BOOT (kexec), CAP_NET_RAW (sniffing the host's network, which the
 * RUN shares), CAP_LINUX_IMMUTABLE (files in the wafer nobody can remove) and the rest nspawn grants.
 */
const RUN_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_NET_BIND_SERVICE',
  'CAP_SETFCAP',
  'CAP_SETGID',
  'CAP_SETPCAP',
  'CAP_SETUID',
  'CAP_SYS_CHROOT',
]

/**
 * Every capability systemd-nspawn 252 knows (`systemd-nspawn --capability=help`): all but
 * RUN_CAPABILITIES are dropped, not just nspawn's defaults, so a later nspawn that grants more by
 * default grants a RUN nothing more.
 */
const ALL_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_LINUX_IMMUTABLE',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_ADMIN',
  'CAP_NET_RAW',
  'CAP_IPC_LOCK',
  'CAP_IPC_OWNER',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_CHROOT',
  'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_NICE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD',
  'CAP_LEASE',
  'CAP_AUDIT_WRITE',
  'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE',
  'CAP_MAC_ADMIN',
  'CAP_SYSLOG',
  'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND',
  'CAP_AUDIT_READ',
  'CAP_PERFMON',
  'CAP_BPF',
  'CAP_CHECKPOINT_RESTORE',
]

/** nspawn's flag that leaves a RUN RUN_CAPABILITIES alone (exported for the seccomp test). */
export const DROP_CAPABILITIES = `--drop-capability=${ALL_CAPABILITIES.filter((cap) => !RUN_CAPABILITIES.includes(cap)).join(',')}`

/** Where a RUN that switches to bare numbers finds the host's static busybox (on nspawn's /run tmpfs). */
const BUSYBOX_INSIDE = '/run/wafers/busybox'

/**
 * What systemd-nspawn (as runInRoot starts it) makes in a container's root when it is missing: the
 * mount points it mounts onto, the resolver file it binds over and the base file system (`bin` ->
 * `usr/bin`, ...). Only these: a RUN that makes one of them itself (`mkdir /run`) finds it there
 * and leaves it out of its layer. Directories end
 * in `/`; a link lists its candidate targets (the first that exists, holding `needs` if given).
 */
const NSPAWN_NEEDS: Array<{link?: string[]; mode?: number; needs?: string; rel: string}> = [
  {mode: 0o755, rel: 'usr/'},
  {mode: 0o755, rel: 'etc/'},
  {mode: 0o755, rel: 'var/'},
  {mode: 0o555, rel: 'dev/'},
  {mode: 0o555, rel: 'proc/'},
  {mode: 0o555, rel: 'sys/'},
  {mode: 0o755, rel: 'run/'},
  {mode: 0o700, rel: 'root/'},
  {mode: 0o644, rel: 'etc/resolv.conf'},
  {link: ['usr/bin'], rel: 'bin'},
  {link: ['usr/sbin'], rel: 'sbin'},
  {link: ['usr/lib'], rel: 'lib'},
  {link: ['usr/lib/x86_64-linux-gnu', 'usr/lib64'], needs: 'ld-linux-x86-64.so.2', rel: 'lib64'},
  {link: ['usr/lib32'], rel: 'lib32'},
  {link: ['usr/libx32'], rel: 'libx32'},
]

/**
 * Makes `dir`, a new directory of wafers' own, holding what nspawn needs in a root and the stack
 * `layers` (data directories, nearest first) lacks. Mounted as the lower layer right under a RUN's
 * upper, it gives nspawn's mounts existing paths to land on, so nspawn writes nothing into the new
 * wafer and nothing has to be removed from it afterwards: all the RUN itself makes stays.
 */
export async function nspawnPlaceholders(layers: string[], dir: string): Promise<void> {
  await loadXattr()
  await fs.mkdir(dir, {mode: 0o755})
  const made = new Set<string>()
  const has = (rel: string) => made.has(rel) || lookup(layers, rel).kind !== 'none'
  for (const need of NSPAWN_NEEDS) {
    const rel = need.rel.replace(/\/$/, '')
    const parent = path.posix.dirname(rel)
    if (parent !== '.' && !made.has(parent) && lookup(layers, parent).kind !== 'dir') continue
    if (lookup(layers, rel).kind !== 'none') continue
    const file = path.join(dir, rel)
    await mirrorParents(layers, dir, parent, made)
    if (need.link) {
      const target = need.link.find((t) => has(need.needs ? `${t}/${need.needs}` : t))
      if (target === undefined) continue
      await fs.symlink(target, file)
    } else if (need.rel.endsWith('/')) {
      await fs.mkdir(file)
      await fs.chmod(file, need.mode as number)
    } else {
      await fs.writeFile(file, '', {flag: 'wx', mode: need.mode})
    }

    made.add(rel)
  }
}

/**
 * Whether `layer` (one wafer's data) holds anything at a path nspawnPlaceholders looks at, or above
 * one: if not, putting it on a stack does not change what that stack needs.
 */
export function touchesNspawnPaths(layer: string): boolean {
  const paths = new Set<string>()
  for (const {rel} of NSPAWN_NEEDS) {
    for (let at = rel.replace(/\/$/, ''); at !== '.'; at = path.posix.dirname(at)) paths.add(at)
  }

  // Shallow paths first: a deeper one is looked at only once everything above it is known to be
  // absent from the layer, so no link in the layer is ever followed.
  return [...paths]
    .sort((a, b) => a.split('/').length - b.split('/').length)
    .some((rel) => lstatSync(path.join(layer, rel), {throwIfNoEntry: false}) !== undefined)
}

/**
 * Makes the directories above `rel` in `dir` that only the stack has, with the stack's owner, mode
 * and times: the top layer's directory is the one the merged tree shows.
 */
async function mirrorParents(layers: string[], dir: string, rel: string, made: Set<string>): Promise<void> {
  if (rel === '.' || made.has(rel)) return
  await mirrorParents(layers, dir, path.posix.dirname(rel), made)
  const stat = statIn(layers, rel)
  if (stat === undefined) return
  const file = path.join(dir, rel)
  await fs.mkdir(file)
  await fs.chown(file, stat.uid, stat.gid)
  await fs.chmod(file, stat.mode & 0o7777)
  await fs.utimes(file, stat.atime, stat.mtime)
  made.add(rel)
}

/** The stat of directory `rel` as the stack `layers` shows it: its nearest layer's (no link followed). */
function statIn(layers: string[], rel: string): Stats | undefined {
  const below = lookup(layers, rel)
  return below.kind === 'dir' ? lstatSync(below.dirs[0]) : undefined
}

/**
 * Whether `dir` (a path in the container) is a directory in the overlay of `layers` (nearest
 * first), reached through no link.
 */
export async function isDirectoryIn(layers: string[], dir: string): Promise<boolean> {
  await loadXattr()
  const rel = path.posix.normalize(`/${dir}`).slice(1)
  return rel === '' || lookup(layers, rel).kind === 'dir'
}

/**
 * Whether nspawn can mount an overlay of `paths` (lowest first, the upper last) itself: no path
 * holds a character its option syntax or overlayfs's would take for a separator, and the options
 * fit in the page the kernel takes them in, with room for nspawn to spell the paths its own way.
 */
export function fitsNspawnOverlay(paths: string[]): boolean {
  if (paths.some((file) => /[:,\\\s]/.test(file))) return false
  return paths.reduce((length, file) => length + file.length + 1, 0) + 512 < MAX_OPTIONS_LENGTH
}

/**
 * Runs `spec` with systemd-nspawn in the tree mounted at `root` (a private mount of the step's
 * stack over nspawnPlaceholders), streaming its output lines to `report`. The host's network and
 * resolver are used, or with `network: 'none'` a network namespace of its own holding only a
 * loopback device (nspawn's --private-network). Returns the exit code (0 on success); throws when
 * nspawn cannot run at all.
 */
export async function runInRoot(
  root: string,
  spec: RunSpec,
  report: (line: string) => void,
  signal?: AbortSignal,
  overlay?: string[],
): Promise<number> {
  const machine = `wafers-build-${randomBytes(6).toString('hex')}`
  const args = [
    '--register=no',
    '--keep-unit',
    '--quiet',
    '--console=pipe',
    `--machine=${machine}`,
    '--resolv-conf=bind-host',
    '--timezone=off',
    '--link-journal=no',
    // The bounding set: it holds for the RUN, whatever user it switches to and whatever setuid
    // program it runs, and for everything it starts.
    DROP_CAPABILITIES,
    '-D',
    root,
    // nspawn mounts the overlay on the container's root before anything else it mounts.
    ...(overlay ? [`--overlay=${overlay.join(':')}:/`] : []),
    ...(spec.network === 'none' ? ['--private-network'] : []),
  ]
  let {argv} = spec
  const {user} = spec
  if (user !== undefined && 'uid' in user) {
    // nspawn's --user takes only a user the image lists, with its own groups: a uid it does not list,
    // or a group given, is switched to by the host's static busybox, bound in read-only on nspawn's
    // /run tmpfs (so nothing lands in the layer), exec'ing the command in its place.
    // A user the image lists gets its groups from the image's /etc/group, as buildah gives them:
    // busybox's start-stop-daemon (matching no running process, so it always starts the program,
    // in the foreground) looks the user up inside and calls initgroups before exec'ing it.
    const applet = user.listed ? 'start-stop-daemon' : 'nsenter'
    let busybox: string
    try {
      busybox = await staticBusyboxWith(applet)
    } catch (error) {
      const why = error instanceof WafersError ? error.message.replace(/\.$/, '') : String(error)
      throw new WafersError(
        `a RUN as uid ${user.uid} and gid ${user.gid} needs the host's static busybox, and ${why}.`,
        {suggestions: ['Install the busybox-static package.']},
      )
    }

    args.push(`--bind-ro=${busybox}:${BUSYBOX_INSIDE}`)
    args.push('-E', `HOME=${user.home}`, '-E', `USER=${user.name}`, '-E', `LOGNAME=${user.name}`)
    argv = user.listed
      ? [
          BUSYBOX_INSIDE,
          'start-stop-daemon',
          '-S',
          '-n',
          'wafers-no-match',
          '-c',
          user.name,
          '-a',
          argv[0],
          '--',
          ...argv.slice(1),
        ]
      : [BUSYBOX_INSIDE, 'nsenter', '-F', '-S', String(user.uid), '-G', String(user.gid), '--', ...argv]
  } else if (user !== undefined) {
    args.push(`--user=${user.name}`)
  }

  for (const bind of spec.binds ?? []) {
    if (/[:,\\\s]/.test(bind.host))
      throw new WafersError(`${bind.host} holds a character nspawn cannot bind from; it cannot be mounted in a RUN.`)
    args.push(`--${bind.readOnly ? 'bind-ro' : 'bind'}=${bind.host}:${bind.target}`)
  }

  // The image's Env comes last: it wins over the HOME and USER set for a numeric user, as in Docker.
  for (const variable of spec.env) args.push('-E', variable)
  if (spec.workdir) args.push(`--chdir=${spec.workdir}`)
  args.push('--', ...argv)
  // When wafers dies, even by SIGKILL, the RUN dies with it: no RUN goes on writing into a staging
  // dir that the next build removes as abandoned. runStreaming starts unshare under setpriv
  // --pdeathsig, so the kernel kills unshare with wafers; unshare then kills nspawn, the first
  // process of a PID namespace of its own, and with it the kernel kills everything in that
  // namespace, the container's processes included.
  // The RUN's system call filter (seccomp.ts) is installed before nspawn starts, so nothing nspawn
  // starts escapes it; nspawn itself makes no user namespace (no --private-users). SYSTEMD_SECCOMP=0
  // below keeps nspawn from compiling its own allow-list on top, which the filter already holds.
  const [program, programArgs] = underRunFilter([
    'unshare',
    '--pid',
    '--fork',
    '--kill-child=KILL',
    '--',
    'systemd-nspawn',
    ...args,
  ])
  const result = await runStreaming(
    program,
    programArgs,
    (line) => {
      // nspawn's own complaint about a /run that is not tmpfs (hosts without systemd as PID 1).
      if (!line.startsWith('Attempted to remove disk file system under "/run/systemd/nspawn/propagate/')) report(line)
    },
    // /tmp stays the image's (as in Docker), not a tmpfs; /run is nspawn's tmpfs.
    // Stopped with SIGKILL: unshare blocks SIGTERM, and its death is what takes nspawn and the RUN.
    {
      check: false,
      // No image lock file beside the root (it would outlive a killed nspawn): the root is this RUN's
      // alone. No perl complaint about the host's locale among the RUN's lines. And no second filter
      // of nspawn's (60 ms of libseccomp at every start): the one wafers installed refuses as much.
      env: {PERL_BADLANG: '0', SYSTEMD_NSPAWN_LOCK: '0', SYSTEMD_NSPAWN_TMPFS_TMP: '0', SYSTEMD_SECCOMP: '0'},
      // The locks of the stages being filled: no stage is swept while the RUN writes into it.
      inherit: stagingLockFds(),
      name: 'the RUN',
      package: 'perl-base',
      stopSignal: 'SIGKILL',
    },
    signal,
  ).finally(async () => {
    await fs.rm(path.join('/run/systemd/nspawn/propagate', machine), {force: true, recursive: true}).catch(() => {})
  })
  return result.exitCode
}

/** The error of a RUN that exited non-zero: names the step and the exit code. */
export function runFailed(step: number, text: string, exitCode: number): WafersError {
  return new WafersError(`step ${step} (${short(text)}) failed with exit code ${exitCode}; no wafer was made for it.`)
}

function short(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text
}
