import {randomBytes} from 'node:crypto'
import {promises as fs, lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {runStreaming} from '../seed.js'

/** How one RUN step runs. */
export interface RunSpec {
  /** The argument vector (exec form, or the shell and its `-c` plus the command line). */
  argv: string[]
  /** The environment: the image's Env and the build args in scope, `KEY=VALUE`. */
  env: string[]
  user?: string
  workdir?: string
}

/**
 * What systemd-nspawn makes in a container's root when it is missing: the base file system
 * (`lib` -> `usr/lib`, ...), the mount points it mounts onto and the files it binds over. Each is
 * removed from the new layer after a RUN when the RUN's stack lacked it before and it is still what
 * nspawn makes (an empty file or directory, a link into usr/).
 */
const NSPAWN_MADE = [
  'bin',
  'dev',
  'etc',
  'etc/hostname',
  'etc/localtime',
  'etc/machine-id',
  'etc/resolv.conf',
  'lib',
  'lib32',
  'lib64',
  'libx32',
  'proc',
  'root',
  'run',
  'sbin',
  'sys',
  'tmp',
  'usr',
  'var',
  'var/log/journal',
]

/**
 * Runs `spec` with systemd-nspawn in the tree mounted at `root` (a private mount of the step's
 * stack, whose writable layer is `upper`), streaming its output lines to `report`. The host's
 * network and resolver are used; what nspawn itself adds to the tree is removed from `upper`
 * afterwards. Returns the exit code (0 on success); throws when nspawn cannot run at all.
 */
export async function runInRoot(
  root: string,
  upper: string,
  spec: RunSpec,
  report: (line: string) => void,
  signal?: AbortSignal,
): Promise<number> {
  const missing = NSPAWN_MADE.filter((rel) => !exists(path.join(root, rel)))
  // nspawn refuses a tree without /usr ("does not look like an OS tree"); a minimal image may have
  // none. It is made for the run and removed with nspawn's other leftovers when still empty.
  if (missing.includes('usr')) await fs.mkdir(path.join(root, 'usr'), {mode: 0o755})
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
    '-D',
    root,
  ]
  for (const variable of spec.env) args.push('-E', variable)
  if (spec.workdir) args.push(`--chdir=${spec.workdir}`)
  if (spec.user) args.push(`--user=${spec.user}`)
  args.push('--', ...spec.argv)
  const result = await runStreaming(
    'systemd-nspawn',
    args,
    (line) => {
      // nspawn's own complaint about a /run that is not tmpfs (hosts without systemd as PID 1).
      if (!line.startsWith('Attempted to remove disk file system under "/run/systemd/nspawn/propagate/')) report(line)
    },
    {check: false, package: 'systemd-container'},
    signal,
  ).finally(async () => {
    await fs.rm(path.join('/run/systemd/nspawn/propagate', machine), {force: true, recursive: true}).catch(() => {})
  })
  await removeNspawnFiles(upper, missing)
  return result.exitCode
}

/** Removes from `upper` what nspawn made for paths in `missing` (nearest the leaves first). */
async function removeNspawnFiles(upper: string, missing: string[]): Promise<void> {
  for (const rel of [...missing].reverse()) {
    const file = path.join(upper, rel)
    let stat
    try {
      stat = lstatSync(file)
    } catch (error) {
      if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) continue
      throw error
    }

    if (stat.isSymbolicLink()) {
      if (/^usr\/[a-z0-9]+$/.test(await fs.readlink(file))) await fs.unlink(file)
    } else if (stat.isFile()) {
      if (stat.size === 0) await fs.unlink(file)
    } else if (stat.isDirectory() && (await fs.readdir(file)).length === 0) await fs.rmdir(file)
  }

  // A directory copied up only because nspawn put a mount point in it (etc for resolv.conf) is
  // left empty now; if it is the same as the one below, it is not part of the layer.
  for (const rel of ['etc', 'var/log', 'var']) {
    const file = path.join(upper, rel)
    try {
      // eslint-disable-next-line no-await-in-loop
      if (
        (await fs.readdir(file)).length === 0 &&
        missing.includes(`${rel === 'etc' ? 'etc/resolv.conf' : 'var/log/journal'}`)
      ) {
        // eslint-disable-next-line no-await-in-loop
        if (!(await isOpaque(file))) await fs.rmdir(file)
      }
    } catch (error) {
      if (!isErrno(error, 'ENOENT') && !isErrno(error, 'ENOTDIR')) throw error
    }
  }
}

async function isOpaque(dir: string): Promise<boolean> {
  const module = await import('@napi-rs/xattr')
  const {getAttribute} = ((module as {default?: unknown}).default ?? module) as {
    getAttribute(file: string, name: string): Promise<Buffer | null>
  }
  return (await getAttribute(dir, 'trusted.overlay.opaque').catch(() => null))?.toString() === 'y'
}

function exists(file: string): boolean {
  try {
    lstatSync(file)
    return true
  } catch {
    return false
  }
}

/** The error of a RUN that exited non-zero: names the step and the exit code. */
export function runFailed(step: number, text: string, exitCode: number): WafersError {
  return new WafersError(`step ${step} (${short(text)}) failed with exit code ${exitCode}; no wafer was made for it.`)
}

function short(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text
}
