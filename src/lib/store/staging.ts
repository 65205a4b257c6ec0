import {randomBytes} from 'node:crypto'
import {closeSync, constants, promises as fs, lstatSync, openSync, readlinkSync, realpathSync} from 'node:fs'
import path from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {WafersError} from '../errors.js'
import {removeTree} from '../host/files.js'
import {mountsUnder, readMountTable} from '../host/mounts.js'
import {run} from '../host/run.js'
import {Lock, lockDirectory, tryLockDirectory, tryLockFd} from './lock.js'

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

/**
 * A new staging directory for wafer `name` in store `root`, locked until `release()`. `dir` is its
 * name in the store, for messages and the final rename only: anyone who may write to the store
 * can swap that name for a symlink, so everything done to the stage goes through `held`, a path
 * to the directory wafers made and holds open (`/proc/PID/fd/N`), and `fd`, its descriptor.
 */
export interface Stage {
  dir: string
  fd: number
  held: string
  release(): void
}

/**
 * Makes and locks a staging directory for wafer `name`. The caller holds the store lock, under
 * which abandoned stages are swept, so no sweeper can see the new one between mkdir and lock.
 */
export async function makeStage(root: string, name: string): Promise<Stage> {
  const dir = path.join(root, `${STAGE_PREFIX}${name}-${randomBytes(6).toString('hex')}`)
  await fs.mkdir(dir, {mode: 0o700})
  const lock = await lockDirectory(dir).catch(async (error: unknown) => {
    await fs.rmdir(dir).catch(() => {}) // still empty: nothing was put in it
    throw error
  })
  if (lock === undefined) throw new WafersError(`cannot lock the staging directory ${dir}.`)
  if (heldInside(root, lock.fd) === undefined) {
    lock.release()
    throw new WafersError(
      `the staging directory ${dir} was moved out of the store as it was made; nothing was created.`,
    )
  }

  filling.add(lock)
  return {
    dir,
    fd: lock.fd,
    held: heldPath(lock.fd),
    release() {
      filling.delete(lock)
      lock.release()
    },
  }
}

/**
 * A staging directory for wafer `name` inside `parent`, a stage this process holds (a build makes
 * each step's wafer in one): `parent`'s lock covers it, so making it takes no lock and no process,
 * and a sweeper that finds `parent` abandoned removes it with it. Reached only through its own
 * descriptor, like any stage.
 */
export async function makeStageIn(parent: Stage, name: string): Promise<Stage> {
  const dir = path.join(parent.held, `${name}-${randomBytes(6).toString('hex')}`)
  await fs.mkdir(dir, {mode: 0o700})
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  let open = true
  return {
    dir,
    fd,
    held: heldPath(fd),
    release() {
      if (open) closeSync(fd)
      open = false
    },
  }
}

/**
 * Removes a stage made by makeStageIn that is no longer needed. Something still mounted inside it
 * keeps it (and its parent stage then stays for a later create to sweep, mounts and all).
 */
export async function discardStageIn(stage: Stage): Promise<void> {
  try {
    let real: string
    try {
      real = readlinkSync(`/proc/self/fd/${stage.fd}`)
    } catch {
      return
    }

    if (mountsUnder(await readMountTable(), real).length > 0) return
    const entries = await fs.readdir(stage.held)
    await Promise.all(entries.map((entry) => removeTree(path.join(stage.held, entry))))
    await fs.rmdir(stage.dir).catch(() => {})
  } finally {
    stage.release()
  }
}

/**
 * Whether stage `name` in store `root` belongs to a create or build that still runs: it is a real
 * directory there (opened without following a link) whose lock someone holds, in any PID namespace.
 */
export async function stageHeld(root: string, name: string): Promise<boolean> {
  let fd: number
  try {
    fd = openSync(path.join(root, name), constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  } catch {
    return false // removed (its command ended or it was swept), or not a directory of ours
  }

  const lock = await tryLockFd(fd)
  lock?.release()
  return lock === undefined
}

/** A path that reaches the directory open on `fd` whatever happens to its name (also for children). */
export function heldPath(fd: number): string {
  return `/proc/${process.pid}/fd/${fd}`
}

/**
 * Where the directory open on `fd` is now, when that is directly inside store `root` (a real path);
 * undefined when it is anywhere else (moved out of the store, or deeper inside it).
 */
function heldInside(root: string, fd: number): string | undefined {
  let now: string
  try {
    now = readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return undefined
  }

  let realRoot = root
  try {
    realRoot = realpathSync(root)
  } catch {}

  return path.dirname(now) === realRoot && !now.endsWith(' (deleted)') ? now : undefined
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
    const lock = await tryLockDirectory(dir)
    if (lock === undefined) continue // still being filled, a symlink, or kept by a program a killed wafers left
    try {
      await removeHeld(root, dir, lock.fd)
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
export async function discardStage(root: string, stage: Stage): Promise<void> {
  // Our own descriptor of the stage, taken before the lock's is closed; each try reopens it (a
  // failed try closes the descriptor it was given).
  const own = openSync(stage.held, constants.O_RDONLY | constants.O_DIRECTORY)
  stage.release()
  // A program just stopped (tar after Ctrl-C) may hold the lock a moment more while it exits:
  // wait a little for it, never for long, and never remove what is still held.
  let lock: Lock | undefined
  try {
    for (let attempt = 0; attempt < 40 && lock === undefined; attempt++) {
      if (attempt > 0) {
        await sleep(50)
      }

      lock = await tryLockFd(openSync(`/proc/self/fd/${own}`, constants.O_RDONLY | constants.O_DIRECTORY))
    }
  } finally {
    closeSync(own)
  }

  if (lock === undefined) return
  try {
    await removeHeld(root, stage.dir, lock.fd)
  } finally {
    lock.release()
  }
}

/**
 * Removes `dir`, an entry of store `root` (a half-made wafer's stage, or what a removal left), when
 * it is a real directory. Opened without following a symlink, and from then on reached only through
 * that descriptor, after checking that the directory opened is directly inside the store.
 */
export async function removeStaging(root: string, dir: string): Promise<void> {
  let fd: number
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  } catch {
    return // gone, or a symlink or file: never followed
  }

  try {
    await removeHeld(root, dir, fd)
  } finally {
    closeSync(fd)
  }
}

/**
 * Removes the directory open on `fd` (named `dir` in store `root`). A seeder's program may have left
 * file systems mounted inside it (debootstrap mounts proc and sys, and in some containers binds the
 * host's /dev): those are detached first, deepest first, so the removal never reaches into them.
 * Nothing is unmounted or deleted unless the directory held is directly inside the store.
 */
async function removeHeld(root: string, dir: string, fd: number): Promise<void> {
  const real = heldInside(root, fd)
  if (real === undefined) return // moved out of the store meanwhile: not ours to touch
  const held = heldPath(fd)
  const inside = (mountpoint: string) => held + mountpoint.slice(real.length)
  for (const {mountpoint} of mountsUnder(await readMountTable(), real)) {
    await run('umount', ['--lazy', '--no-canonicalize', inside(mountpoint)]).catch(() => {})
  }

  const left = mountsUnder(await readMountTable(), real)
  if (left.length > 0) {
    throw new WafersError(
      `${dir} still has ${left.map((entry) => entry.mountpoint).join(', ')} mounted; unmount and remove it by hand.`,
    )
  }

  const entries = await fs.readdir(held)
  // By descriptor (removeTree): a tree deeper than PATH_MAX, as a refused layer may leave, goes too.
  await Promise.all(entries.map((entry) => removeTree(path.join(held, entry))))
  // The emptied directory goes by its name; if that name is something else now, rmdir leaves a
  // symlink or a non-empty directory alone.
  await fs.rmdir(dir).catch(() => {})
}

/** Whether `dir` itself is a directory, not a symlink to one. */
export function isRealDirectory(dir: string): boolean {
  try {
    return lstatSync(dir).isDirectory()
  } catch {
    return false
  }
}
