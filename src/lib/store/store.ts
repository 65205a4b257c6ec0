import {randomBytes} from 'node:crypto'
import {fchmodSync, fstatSync, promises as fs, lstatSync, realpathSync, statSync} from 'node:fs'
import path from 'node:path'

import {WafersError, asWafersError, isErrno} from '../errors.js'
import {readStoreFile, writeFileAtomic} from '../host/files.js'
import {withLock} from './lock.js'
import {type WaferMeta, writeMeta} from './meta.js'
import {checkName, isValidName} from './names.js'
import {type Stage, discardStage, discardStageIn, makeStage, makeStageIn, removeAbandonedStages} from './staging.js'

export const DEFAULT_WAFERS = '/var/lib/wafers'
/** Where machinectl and systemd-nspawn@.service look for containers, and so where stacks go by default. */
export const DEFAULT_STACKS = '/var/lib/machines'

/** Where wafers live and where stacks are mounted. */
export interface Locations {
  stacks: string
  wafers: string
}

/**
 * Reads WAFERS and STACKS from the environment, falling back to the defaults. Refuses a WAFERS
 * that is not a directory, and locations that overlap (a stack mounted over a wafer's own files).
 */
export function locationsFromEnv(env: NodeJS.ProcessEnv = process.env): Locations {
  const locations = {
    stacks: path.resolve(env.STACKS || DEFAULT_STACKS),
    // A symlinked WAFERS (say /var/lib/wafers on a bigger disk) is the admin's choice: it is
    // resolved once, here, and only the real directory is used (and locked) from then on.
    wafers: realOrResolved(path.resolve(env.WAFERS || DEFAULT_WAFERS)),
  }
  checkLocations(locations)
  return locations
}

/** Refuses a WAFERS or STACKS that is there but not a directory, and the two overlapping. */
export function checkLocations(locations: Locations): void {
  for (const [variable, dir] of [
    ['WAFERS', locations.wafers],
    ['STACKS', locations.stacks],
  ]) {
    const stat = statSync(dir, {throwIfNoEntry: false})
    if (stat !== undefined && !stat.isDirectory()) {
      throw new WafersError(`${variable} is ${dir}, which is not a directory.`)
    }
  }

  const wafers = realOrResolved(locations.wafers)
  const stacks = realOrResolved(locations.stacks)
  const inside = (dir: string, outer: string) => dir === outer || dir.startsWith(outer === '/' ? '/' : outer + '/')
  if (inside(stacks, wafers) || inside(wafers, stacks)) {
    const how = wafers === stacks ? 'are the same directory' : 'overlap'
    throw new WafersError(
      `WAFERS (${locations.wafers}) and STACKS (${locations.stacks}) ${how}; stacks would be mounted over wafers' own files, so give them separate directories.`,
    )
  }
}

/** The real path of `dir`, or of its nearest existing ancestor with the rest appended. */
function realOrResolved(dir: string): string {
  try {
    return realpathSync(dir)
  } catch {
    const parent = path.dirname(dir)
    return parent === dir ? dir : path.join(realOrResolved(parent), path.basename(dir))
  }
}

/**
 * The mode wafers makes $WAFERS and $STACKS with: images bring device nodes and setuid files as
 * they are, so no other user may reach into the store (as Docker keeps /var/lib/docker 0710).
 */
export const PRIVATE_DIR_MODE = 0o700

/** Makes the store's directory if missing; refuses one that is not a directory in one sentence. */
export async function makeStoreRoot(root: string): Promise<void> {
  try {
    await fs.mkdir(root, {mode: PRIVATE_DIR_MODE, recursive: true})
  } catch (error) {
    if (isErrno(error, 'EEXIST') || isErrno(error, 'ENOTDIR')) {
      throw new WafersError(`WAFERS is ${root}, which is not a directory.`)
    }

    throw asWafersError(error)
  }
}

/** What a new wafer copies from the layers below it. */
export interface CreateOptions {
  /** Fills the new `data` before the wafer appears (a seeder); a throw leaves no wafer. */
  fill?: (data: string) => Promise<void>
  /** Written as the new wafer's meta.json before it appears. */
  meta?: WaferMeta
  /** The nearest `etc/machine-id` below the new wafer: the new wafer gets a fresh one beside it. */
  machineId?: string
  /** The parent's `data`, whose owner and mode the new `data` takes. */
  parentData?: string
  /**
   * A stage of openStage's to make the wafer in (a build makes every step's wafer in one), instead
   * of a stage of its own: saves the locks a stage of its own takes.
   */
  within?: Stage
}

/**
 * The on-disk layout of wafers: `$WAFERS/NAME/{data,work,parent}`, exactly as the bash tool made it.
 * Entries whose names are not valid wafer names (such as `.links`) are the store's own.
 */
export class WaferStore {
  constructor(readonly root: string) {}

  /** The directory of overlayfs short links, also the working directory of every mount. */
  get linksDir(): string {
    return path.join(this.root, '.links')
  }

  /**
   * Creates wafer `name` atomically: it is built under a hidden name and renamed into place, so
   * an interrupted create leaves no wafer at all. Throws when the wafer appeared meanwhile.
   */
  async create(name: string, parent: string | undefined, options: CreateOptions = {}): Promise<void> {
    const target = this.dir(name)
    const stage = options.within ? await makeStageIn(options.within, name) : await this.openStage(name)
    try {
      // Everything goes through stage.held, the directory made above, never through its name,
      // which anyone who may write to the store can swap for a symlink meanwhile.
      await fs.mkdir(path.join(stage.held, 'work'))
      const data = path.join(stage.held, 'data')
      await fs.mkdir(data)
      if (options.parentData) await copyOwnerAndMode(options.parentData, data)
      if (options.machineId) await writeFreshMachineId(options.machineId, data)
      if (parent !== undefined) await fs.writeFile(path.join(stage.held, 'parent'), `${checkName(parent)}\n`)
      // A seeder's programs reach the stage through /proc/PID/fd/N too, never through its name.
      if (options.fill) await options.fill(data)
      if (options.meta) writeMeta(stage.held, options.meta)
      fchmodSync(stage.fd, 0o755)
      // Seeding may take minutes without the lock; the parent is checked again under it, so that a
      // racing `wafers rm` cannot leave the new wafer on a parent that is gone.
      await withLock(this.root, async () => {
        if (parent !== undefined && !(await this.hasData(parent))) {
          throw new WafersError(
            `wafer ${parent}, the parent of ${name}, was removed meanwhile; ${name} was not created.`,
          )
        }

        // rename(2) takes a name: the one renamed must be the directory made, before and after.
        const made = fstatSync(stage.fd)
        const same = (file: string) => {
          const now = lstatSync(file, {throwIfNoEntry: false})
          return now !== undefined && now.isDirectory() && now.ino === made.ino && now.dev === made.dev
        }

        if (!same(stage.dir)) throw new StageSwapped(stage.dir)
        await fs.rename(stage.dir, target)
        if (!same(target)) {
          await fs.rename(target, stage.dir).catch(() => {})
          throw new StageSwapped(stage.dir)
        }
      })
      stage.release()
    } catch (error) {
      await (options.within ? discardStageIn(stage) : discardStage(this.root, stage)).catch(() => {})
      if (error instanceof StageSwapped) {
        throw new WafersError(
          `the staging directory ${error.dir} was replaced by something else while wafer ${name} was made; ${name} was not created.`,
        )
      }

      if (isErrno(error, 'EEXIST') || isErrno(error, 'ENOTEMPTY')) {
        throw new WaferExistsError(name)
      }

      throw asWafersError(error)
    }
  }

  /**
   * A new staging directory in the store, locked until released (or discarded with discardStage):
   * where create makes a wafer, or where a build makes each of its steps' wafers (create's
   * `within`). `label` names it (`.create-LABEL-RANDOM`).
   */
  async openStage(label: string): Promise<Stage> {
    await makeStoreRoot(this.root)
    // Sweeping abandoned stages and making ours happen under the store lock, so that no other
    // create can take ours for abandoned before it is locked.
    return withLock(this.root, async () => {
      await removeAbandonedStages(this.root)
      return makeStage(this.root, label)
    }).catch((error: unknown) => {
      throw asWafersError(error)
    })
  }

  dataDir(name: string): string {
    return path.join(this.dir(name), 'data')
  }

  /** The directory of wafer `name`; refuses names that are not valid wafer names. */
  dir(name: string): string {
    return path.join(this.root, checkName(name))
  }

  /**
   * Whether a directory for wafer `name` exists (with or without `data`). Refuses a wafer directory
   * that is a symlink: it could make a directory outside the store a layer.
   */
  async exists(name: string): Promise<boolean> {
    const dir = this.dir(name)
    if (await isDirectory(dir)) return true
    if (lstatSync(dir, {throwIfNoEntry: false})?.isSymbolicLink()) {
      throw new WafersError(`${dir}, the directory of wafer ${name}, is a symlink; wafers does not follow it.`)
    }

    return false
  }

  /** Whether wafer `name` has a `data` directory (in a real wafer directory, not a symlinked one). */
  async hasData(name: string): Promise<boolean> {
    return (await this.exists(name)) && isDirectory(this.dataDir(name))
  }

  /** Names of all wafers in the store, sorted. */
  async list(): Promise<string[]> {
    let entries
    try {
      entries = await fs.readdir(this.root, {withFileTypes: true})
    } catch (error) {
      if (isErrno(error, 'ENOENT')) return []
      if (isErrno(error, 'ENOTDIR')) throw new WafersError(`WAFERS is ${this.root}, which is not a directory.`)
      throw asWafersError(error)
    }

    return entries
      .filter((entry) => entry.isDirectory() && isValidName(entry.name))
      .map((entry) => entry.name)
      .sort()
  }

  parentFile(name: string): string {
    return path.join(this.dir(name), 'parent')
  }

  /**
   * The parent named in wafer `name`'s `parent` file, or undefined for a base wafer.
   * Accepts the bash tool's format (one name, trailing newline optional).
   */
  async readParent(name: string): Promise<string | undefined> {
    return this.readParentSync(name)
  }

  /** readParent, for walks that read thousands of parent files and want no promise per file. */
  readParentSync(name: string): string | undefined {
    // Synchronous on purpose: tracing a deep stack reads 500 parent files one after another, and
    // a promise-based read makes four trips through libuv's thread pool (open, stat, read, close).
    // Sync reads (here, in isDirectory, and for links and layer checks) make `wafers stack` of a
    // 501-wafer stack ~80 ms faster (bench/RESULTS.md). readStoreFile never follows a symlink,
    // never blocks on a FIFO and never reads more than a megabyte.
    const text = readStoreFile(this.parentFile(name), `the parent file of wafer ${name}`)
    return text === undefined ? undefined : parseParent(name, text)
  }

  /**
   * Points wafer `name` at `parent` (a base wafer when undefined), replacing its `parent` file
   * atomically. The caller holds the store lock and has checked that nothing is stacked on it.
   */
  async writeParent(name: string, parent: string | undefined): Promise<void> {
    if (parent === undefined) await fs.rm(this.parentFile(name), {force: true})
    else writeFileAtomic(this.parentFile(name), `${checkName(parent)}\n`)
  }

  /** Removes what creates killed midway left behind (see staging.ts); takes the store lock. */
  async removeAbandonedStages(): Promise<void> {
    await withLock(this.root, () => removeAbandonedStages(this.root))
  }

  workDir(name: string): string {
    return path.join(this.dir(name), 'work')
  }
}

/** What create throws when the wafer appeared while it was being made (another command made it). */
export class WaferExistsError extends WafersError {
  constructor(readonly wafer: string) {
    super(`wafer ${wafer} was created by someone else meanwhile.`)
  }
}

/** The stage's name no longer names the directory wafers made for it. */
class StageSwapped extends Error {
  constructor(readonly dir: string) {
    super(dir)
  }
}

/**
 * The parent named by the text of wafer `name`'s `parent` file, or undefined for none: one name,
 * trailing newline optional, as the bash tool wrote it.
 */
export function parseParent(name: string, text: string): string | undefined {
  const lines = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '')
  if (lines.length === 0) return undefined
  if (lines.length > 1) {
    throw new WafersError(`the parent file of wafer ${name} has ${lines.length} lines; it must name one wafer.`)
  }

  return checkName(lines[0], `the parent of wafer ${name},`)
}

/** Whether `file` is a directory (following no symlink at the last component). */
export async function isDirectory(file: string): Promise<boolean> {
  // Synchronous for the same reason as readParent.
  try {
    return lstatSync(file).isDirectory()
  } catch (error) {
    if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) return false
    throw error
  }
}

async function copyOwnerAndMode(from: string, to: string): Promise<void> {
  const stat = await fs.stat(from)
  await fs.chown(to, stat.uid, stat.gid)
  await fs.chmod(to, stat.mode & 0o7777)
}

/**
 * Gives a new wafer its own machine id beside the one at `below`, so that two containers never
 * share one. `etc` and the file take the owner and mode of the ones below: in a merged overlay the
 * upper directory's attributes are the ones a container sees.
 */
async function writeFreshMachineId(below: string, data: string): Promise<void> {
  const etc = path.join(data, 'etc')
  await fs.mkdir(etc)
  await copyOwnerAndMode(path.dirname(below), etc)
  const file = path.join(etc, 'machine-id')
  await fs.writeFile(file, `${randomBytes(16).toString('hex')}\n`)
  await copyOwnerAndMode(below, file)
}
