import {spawn} from 'node:child_process'
import {closeSync, constants, openSync} from 'node:fs'

import {WafersError, isErrno} from './errors.js'
import {systemProgram} from './run.js'

/** A held lock; release() lets the next waiter in. */
export interface Lock {
  /** The open descriptor the lock is held on: a child given it holds the lock too, until it ends. */
  readonly fd: number
  release(): void
}

const EXIT_BY_SIGNAL: Partial<Record<NodeJS.Signals, number>> = {SIGHUP: 129, SIGINT: 130, SIGTERM: 143}

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
  try {
    if ((await flock(fd, ['-x', '-n'])).code !== 0) {
      options.onWait?.()
      const status = await flock(fd, ['-x', '-w', String(options.waitSeconds ?? 600)], true)
      if (status.signal) {
        throw new WafersError(`interrupted while waiting for the lock on ${dir}; nothing was done.`, {
          exit: EXIT_BY_SIGNAL[status.signal] ?? 130,
        })
      }

      if (status.code !== 0) {
        throw new WafersError(`another wafers command still holds the lock on ${dir}; try again when it is done.`)
      }
    }
  } catch (error) {
    closeSync(fd)
    throw error
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
 * Runs `fn` holding the lock on `dir` (when it exists), releasing it however `fn` ends. Nested
 * calls for the same directory in this process run under the lock already held.
 */
export async function withLock<T>(dir: string, fn: () => Promise<T>, onWait?: () => void): Promise<T> {
  if (held.has(dir)) return fn()
  const lock = await lockDirectory(dir, {onWait})
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

/**
 * Runs flock(1) on our descriptor `fd`. With `interruptible`, a SIGINT, SIGTERM or SIGHUP sent to
 * wafers alone (not only Ctrl-C, which reaches flock too) stops the wait: the result then carries
 * that signal.
 */
function flock(
  fd: number,
  args: string[],
  interruptible = false,
): Promise<{code: null | number; signal: NodeJS.Signals | null}> {
  return new Promise((resolve, reject) => {
    const child = spawn(systemProgram('flock'), [...args, '3'], {stdio: ['ignore', 'ignore', 'ignore', fd]})
    let caught: NodeJS.Signals | null = null
    const onSignal = (signal: NodeJS.Signals) => {
      caught = signal
      child.kill('SIGKILL')
    }

    const signals: NodeJS.Signals[] = interruptible ? ['SIGINT', 'SIGTERM', 'SIGHUP'] : []
    for (const signal of signals) process.on(signal, onSignal)
    const done = () => {
      for (const signal of signals) process.off(signal, onSignal)
    }

    child.on('error', (error) => {
      done()
      reject(isErrno(error, 'ENOENT') ? new WafersError('flock is not installed; install util-linux.') : error)
    })
    child.on('exit', (code, signal) => {
      done()
      resolve({code, signal: caught ?? signal})
    })
  })
}
