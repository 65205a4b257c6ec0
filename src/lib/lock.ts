import {spawn} from 'node:child_process'
import {closeSync, constants, openSync} from 'node:fs'

import {WafersError, isErrno} from './errors.js'

/** A held lock; release() lets the next waiter in. */
export interface Lock {
  release(): void
}

/**
 * Takes an exclusive flock(2) on directory `dir`, waiting up to `waitSeconds` (calling `onWait`
 * once if it has to wait). Node has no flock, so flock(1) locks our open file description through
 * an inherited descriptor; the lock then belongs to this process and the kernel drops it when the
 * process ends, however it ends (kill -9 included). Resolves to undefined when `dir` cannot be opened.
 */
export async function lockDirectory(
  dir: string,
  options: {onWait?: () => void; waitSeconds?: number} = {},
): Promise<Lock | undefined> {
  let fd: number
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY)
  } catch (error) {
    // Nothing to lock yet, or not ours to lock: the command's own checks say what is wrong.
    if (isErrno(error, 'ENOENT') || isErrno(error, 'EACCES') || isErrno(error, 'ENOTDIR')) return undefined
    throw error
  }

  try {
    if ((await flock(fd, ['-x', '-n'])).code !== 0) {
      options.onWait?.()
      const status = await flock(fd, ['-x', '-w', String(options.waitSeconds ?? 600)])
      if (status.signal) {
        throw new WafersError(`interrupted while waiting for the lock on ${dir}; nothing was done.`, {exit: 130})
      }

      if (status.code !== 0) {
        throw new WafersError(`another wafers command still holds the lock on ${dir}; try again when it is done.`)
      }
    }
  } catch (error) {
    closeSync(fd)
    throw error
  }

  let held = true
  return {
    release() {
      if (held) closeSync(fd)
      held = false
    },
  }
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

function flock(fd: number, args: string[]): Promise<{code: null | number; signal: NodeJS.Signals | null}> {
  return new Promise((resolve, reject) => {
    const child = spawn('flock', [...args, '3'], {stdio: ['ignore', 'ignore', 'ignore', fd]})
    child.on('error', (error) => {
      reject(isErrno(error, 'ENOENT') ? new WafersError('flock is not installed; install util-linux.') : error)
    })
    child.on('exit', (code, signal) => resolve({code, signal}))
  })
}
