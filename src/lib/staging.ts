import {randomBytes} from 'node:crypto'
import {promises as fs, lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from './errors.js'
import {Lock, lockDirectory, tryLockDirectory} from './lock.js'
import {mountsUnder, readMountTable} from './mounts.js'
import {run} from './run.js'

/** How the names of staging directories begin: `.create-NAME-RANDOM`. */
const STAGE_PREFIX = '.create-'

/**
 * The locks of the staging directories this process is filling. A seeder's programs get them as
 * an inherited descriptor (see seed.ts), so a staging directory stays locked, and is never taken
 * for abandoned, for as long as anything that may still write into it lives.
 */
const filling = new Set<Lock>()

/** The descriptors of the staging locks this process holds, for the programs that fill them. */
export function stagingLockFds(): number[] {
  return [...filling].map((lock) => lock.fd)
}

/** A new staging directory for wafer `name` in store `root`, locked until `release()`. */
export interface Stage {
  dir: string
  release(): void
}

/**
 * Makes and locks a staging directory for wafer `name`. The caller holds the store lock, under
 * which abandoned stages are swept, so no sweeper can see the new one between mkdir and lock.
 */
export async function makeStage(root: string, name: string): Promise<Stage> {
  const dir = path.join(root, `${STAGE_PREFIX}${name}-${randomBytes(6).toString('hex')}`)
  await fs.mkdir(dir, {mode: 0o700})
  const lock = await lockDirectory(dir)
  if (lock === undefined) throw new WafersError(`cannot lock the staging directory ${dir}.`)
  filling.add(lock)
  return {
    dir,
    release() {
      filling.delete(lock)
      lock.release()
    },
  }
}

/**
 * Removes what creates killed midway (kill -9, power loss) left in store `root`: staging
 * directories whose lock nobody holds any more. Liveness is the kernel's word (a flock is dropped
 * when the last process holding it ends, in any PID namespace), never a PID. Only real
 * directories are touched: a symlink named like a stage is left alone. Call it under the store lock.
 */
export async function removeAbandonedStages(root: string): Promise<void> {
  const entries = await fs.readdir(root).catch(() => [] as string[])
  for (const entry of entries.filter((name) => name.startsWith(STAGE_PREFIX))) {
    const dir = path.join(root, entry)
    if (!isRealDirectory(dir)) continue
    // eslint-disable-next-line no-await-in-loop
    const lock = await tryLockDirectory(dir)
    if (lock === undefined) continue // still being filled, or by a program a killed wafers left
    try {
      // eslint-disable-next-line no-await-in-loop
      await removeStaging(dir)
    } catch {
      // What cannot be removed now (a mount left inside that will not go) is tried again next time.
    } finally {
      lock.release()
    }
  }
}

/**
 * Removes a stage this process made and no longer needs, unless a program it started (a seeder's
 * child that outlived it) still holds its lock: then it stays for a later create to sweep.
 */
export async function discardStage(stage: Stage): Promise<void> {
  stage.release()
  const lock = await tryLockDirectory(stage.dir)
  if (lock === undefined) return
  try {
    await removeStaging(stage.dir)
  } finally {
    lock.release()
  }
}

/**
 * Removes a half-made wafer's staging directory. A seeder's program may have left file systems
 * mounted inside it (debootstrap mounts proc and sys, and in some containers binds the host's
 * /dev): those are detached first, deepest first, so the removal never reaches into them.
 * A symlink is never followed: only a real directory is cleaned.
 */
export async function removeStaging(stage: string): Promise<void> {
  if (!isRealDirectory(stage)) return
  const real = await fs.realpath(stage).catch(() => stage)
  for (const {mountpoint} of mountsUnder(await readMountTable(), real)) {
    // eslint-disable-next-line no-await-in-loop
    await run('umount', ['--lazy', mountpoint]).catch(() => {})
  }

  const left = mountsUnder(await readMountTable(), real)
  if (left.length > 0) {
    throw new WafersError(
      `${stage} still has ${left.map((entry) => entry.mountpoint).join(', ')} mounted; unmount and remove it by hand.`,
    )
  }

  await fs.rm(stage, {force: true, recursive: true})
}

/** Whether `dir` itself is a directory, not a symlink to one. */
export function isRealDirectory(dir: string): boolean {
  try {
    return lstatSync(dir).isDirectory()
  } catch {
    return false
  }
}
