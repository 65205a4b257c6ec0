import {spawn} from 'node:child_process'
import {closeSync, constants, lstatSync, openSync} from 'node:fs'

import {WafersError, isErrno} from '../errors.js'
import {diesWithUs, systemProgram} from '../host/run.js'

/** A held lock; release() lets the next waiter in. */
export interface Lock {
  /** The open descriptor the lock is held on: a child given it holds the lock too, until it ends. */
  readonly fd: number
  release(): void
}

const EXIT_BY_SIGNAL: Partial<Record<NodeJS.Signals, number>> = {SIGHUP: 129, SIGINT: 130, SIGTERM: 143}
/** The signals that end a wait for a lock: Ctrl-C, kill, and the terminal going away. */
const ENDING_SIGNALS: NodeJS.Signals[] = ['SIGHUP', 'SIGINT', 'SIGTERM']

/**
 * Takes an exclusive flock(2) on directory `dir`, waiting up to `waitSeconds` (calling `onWait`
 * once if it has to wait). Node has no flock, so flock(1) locks our open file description through
 * an inherited descriptor; the lock then belongs to this process and the kernel drops it when the
 * process ends, however it ends (kill -9 included). Resolves to undefined when `dir` cannot be opened.
 * Ctrl-C, SIGTERM and SIGHUP end the wait at once, with an error saying nothing was done.
 */
export async function lockDirectory(
  dir: string,
  options: {onWait?: () => void; waitSeconds?: number} = {},
): Promise<Lock | undefined> {
  const fd = openDirectory(dir)
  if (fd === undefined) return undefined
  // Listening from before the first try, so that a signal that comes while we say we wait (or
  // just before flock starts) still ends the wait.
  const interrupt = new AbortController()
  const onSignal = (signal: NodeJS.Signals) => interrupt.abort(signal)
  for (const signal of ENDING_SIGNALS) process.on(signal, onSignal)
  try {
    let status = await flock(fd, ['-x', '-n'])
    if (status.code !== 0 && !interrupt.signal.aborted) {
      options.onWait?.()
      status = await flock(fd, ['-x', '-w', String(options.waitSeconds ?? 600)], interrupt.signal)
    }

    // A signal matters only when it ended a wait: a lock taken is handed over, and the caller,
    // which sees the same signal, cleans up what it made (a stage made and locked, say).
    if (status.code !== 0 && (interrupt.signal.aborted || status.signal)) {
      const signal = (interrupt.signal.reason as NodeJS.Signals | undefined) ?? status.signal!
      throw new WafersError(`interrupted while waiting for the lock on ${dir}; nothing was done.`, {
        exit: EXIT_BY_SIGNAL[signal] ?? 130,
      })
    }

    if (status.code !== 0) {
      throw new WafersError(`another wafers command still holds the lock on ${dir}; try again when it is done.`)
    }
  } catch (error) {
    closeSync(fd)
    throw error
  } finally {
    for (const signal of ENDING_SIGNALS) process.off(signal, onSignal)
  }

  return heldLock(fd)
}

/**
 * Takes the lock on directory `dir` only if nobody holds it: undefined when it is held (by any
 * process, in any PID namespace) or when `dir` is not a real directory (a symlink is never opened).
 */
export async function tryLockDirectory(dir: string): Promise<Lock | undefined> {
  const fd = openDirectory(dir)
  if (fd === undefined) return undefined
  return tryLockFd(fd)
}

/** Takes the lock on the directory open on `fd` if nobody holds it; the lock owns `fd` (closed otherwise). */
export async function tryLockFd(fd: number): Promise<Lock | undefined> {
  try {
    if ((await flock(fd, ['-x', '-n'])).code === 0) return heldLock(fd)
  } catch (error) {
    closeSync(fd)
    throw error
  }

  closeSync(fd)
  return undefined
}

/** Directories this process holds the lock on: flock(2) would deadlock against its own lock. */
const held = new Set<string>()

/**
 * Runs `fn` holding the lock on `dir` (when it exists), releasing it however `fn` ends; refuses a
 * `dir` that is there but cannot be locked (a symlink, a file). Nested
 * calls for the same directory in this process run under the lock already held.
 */
export async function withLock<T>(dir: string, fn: () => Promise<T>, onWait?: () => void): Promise<T> {
  if (held.has(dir)) return fn()
  const lock = await lockDirectory(dir, {onWait})
  // Only a directory that is not there yet has nothing to guard; anything else is never run unlocked.
  if (lock === undefined && lstatSync(dir, {throwIfNoEntry: false}) !== undefined) {
    throw new WafersError(`${dir} cannot be locked (it is not a real directory wafers may open); nothing was done.`)
  }

  if (lock) held.add(dir)
  try {
    return await fn()
  } finally {
    if (lock) held.delete(dir)
    lock?.release()
  }
}

/** Opens `dir` for locking, never through a symlink; undefined when there is nothing (of ours) to lock. */
function openDirectory(dir: string): number | undefined {
  try {
    return openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  } catch (error) {
    // Nothing to lock yet, or not ours to lock: the command's own checks say what is wrong.
    if (['EACCES', 'ELOOP', 'ENOENT', 'ENOTDIR'].some((code) => isErrno(error, code))) return undefined
    throw error
  }
}

function heldLock(fd: number): Lock {
  let open = true
  return {
    fd,
    release() {
      if (open) closeSync(fd)
      open = false
    },
  }
}

/** Runs flock(1) on our descriptor `fd`; `stop` kills it (the result then carries no exit code). */
function flock(
  fd: number,
  args: string[],
  stop?: AbortSignal,
): Promise<{code: null | number; signal: NodeJS.Signals | null}> {
  return new Promise((resolve, reject) => {
    // A waiting flock dies with wafers (diesWithUs). `-n` never waits: it has returned before a
    // death signal could matter, so it starts bare, an exec less on every lock (stack, unstack
    // and each step of a build take one).
    const program = systemProgram('flock')
    const command = args.includes('-n') ? {args: [...args, '3'], file: program} : diesWithUs(program, [...args, '3'])
    const child = spawn(command.file, command.args, {stdio: ['ignore', 'ignore', 'ignore', fd]})
    const kill = () => child.kill('SIGKILL')
    if (stop?.aborted) kill()
    stop?.addEventListener('abort', kill)
    child.on('error', (error) => {
      stop?.removeEventListener('abort', kill)
      reject(isErrno(error, 'ENOENT') ? new WafersError('flock is not installed; install util-linux.') : error)
    })
    child.on('exit', (code, signal) => {
      stop?.removeEventListener('abort', kill)
      resolve({code, signal})
    })
  })
}
