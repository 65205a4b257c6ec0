import {promises as fs, fstatSync, lstatSync, rmdirSync} from 'node:fs'
import path from 'node:path'

import {WafersError, asWafersError, isErrno} from '../errors.js'
import {type Lock, lockDirectory, tryLockDirectory} from '../lock.js'

/**
 * How the names of step locks begin: `$WAFERS/.step-KEY`. A name that starts with a dot is no
 * wafer name, so `wafers list`, `tree` and the stage sweeper (which takes only `.create-*`) pass it by.
 */
const STEP_LOCK_PREFIX = '.step-'

/**
 * How long a build waits for another one making the same step: as long as that build may run a
 * step (an apt-get of half an hour is nothing unusual). The kernel drops the lock the moment the
 * other build ends, however it ends, so a wait never outlives it; Ctrl-C ends a wait at once.
 */
const WAIT_SECONDS = 7 * 24 * 3600

/** Taking the lock again after its holder removed it is normal; this many times in a row is not. */
const MAX_TRIES = 100

/** A held step lock; release() removes its directory (while still holding it) and lets the next build in. */
export interface StepLock {
  release(): void
}

/**
 * Takes the lock of the step with cache key `key` in store `root`, so that two builds never make
 * the same step at once: the second waits (calling `onWait` once) until the first is done, and then
 * finds the step in the cache. The lock is a flock on the directory `.step-KEY`, made when missing,
 * opened without following a symlink, and removed by whoever releases it; a lock taken on a
 * directory that was removed (or replaced) meanwhile is not the lock, so it is taken again.
 */
export async function lockStep(root: string, key: string, onWait: () => void): Promise<StepLock> {
  const dir = path.join(root, `${STEP_LOCK_PREFIX}${key.slice(0, 40)}`)
  let waited = false
  const waiting = () => {
    if (!waited) onWait()
    waited = true
  }

  for (let tries = 0; tries < MAX_TRIES; tries++) {
    // mkdir never follows a symlink at the last component: one there is EEXIST, refused below.
    // eslint-disable-next-line no-await-in-loop
    await fs.mkdir(dir, {mode: 0o700}).catch((error: unknown) => {
      if (!isErrno(error, 'EEXIST')) throw asWafersError(error)
    })
    // eslint-disable-next-line no-await-in-loop
    const lock = await lockDirectory(dir, {onWait: waiting, waitSeconds: WAIT_SECONDS})
    if (lock === undefined) {
      if (lstatSync(dir, {throwIfNoEntry: false}) === undefined) continue // removed before we opened it
      throw new WafersError(
        `${dir}, the lock of a build step, is not a real directory (a symlink or something else); wafers neither follows nor opens it.`,
        {suggestions: [`Remove it (rm ${dir}) and build again.`]},
      )
    }

    if (names(dir, lock)) {
      return {
        release() {
          // Removed while held, so nobody can take it between the check and the removal but someone
          // swapping names in the store, and rmdir removes only an empty directory, never a link.
          try {
            if (names(dir, lock)) rmdirSync(dir)
          } catch {
            // Not empty (someone put something in it) or gone: left for the sweep, or alone.
          } finally {
            lock.release()
          }
        },
      }
    }

    lock.release()
  }

  throw new WafersError(`the lock of a build step, ${dir}, keeps being replaced; something else is changing the store.`)
}

/**
 * Removes step locks nobody holds (their build was killed before it could remove them), so they
 * never pile up in the store; one held by a live build, or that is not a real directory, stays.
 */
export async function removeAbandonedStepLocks(root: string): Promise<void> {
  const entries = await fs.readdir(root).catch(() => [] as string[])
  for (const entry of entries.filter((name) => name.startsWith(STEP_LOCK_PREFIX))) {
    const dir = path.join(root, entry)
    // eslint-disable-next-line no-await-in-loop
    const lock = await tryLockDirectory(dir)
    if (lock === undefined) continue
    try {
      if (names(dir, lock)) rmdirSync(dir)
    } catch {
      // Not empty (not ours to empty) or gone: left alone.
    } finally {
      lock.release()
    }
  }
}

/** Whether `dir` still names the directory `lock` holds (not removed, not swapped for another). */
function names(dir: string, lock: Lock): boolean {
  const now = lstatSync(dir, {throwIfNoEntry: false})
  const held = fstatSync(lock.fd)
  return now !== undefined && now.isDirectory() && now.ino === held.ino && now.dev === held.dev
}
