/**
 * Splitting a wafer in two: its files become a new wafer just below it, and it keeps an empty
 * `data` of its own on top, so what its stack shows is the same and what it gets later lands in
 * its own `data`, never in the new wafer. A pull uses it to take in a layer that a wafer here
 * already holds, without a second copy (oci/dedupe.ts). Nothing is copied: one rename moves the
 * whole `data` directory (the same inodes) into the new wafer.
 *
 * Every step is journalled in `$WAFERS/.split-NAME/` (plan.json, `fresh/`, the new `data` for
 * NAME, and `wafer/`, the new wafer without its data yet), made whole under a temporary name and
 * renamed into place before NAME is touched. finishSplits, which every pull, mv and rm runs under
 * the store lock, finishes a split that got past moving NAME's files and undoes one that did not,
 * as `wafers mv` run again finishes a rename. Anyone may write to $WAFERS: a journal is walked by
 * descriptor, never through a symlink, and one this code could not have left is left alone.
 */
import {randomBytes} from 'node:crypto'
import {
  type BigIntStats,
  closeSync,
  constants,
  promises as fs,
  fstatSync,
  ftruncateSync,
  futimesSync,
  lstatSync,
  openSync,
} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {readStoreFile, writeFileAtomic} from '../host/files.js'
import {loadXattr} from '../host/xattr.js'
import {utimesSeconds} from '../layer/unpack.js'
import {packedAttribute} from '../layer/xattrs.js'
import {type WaferMeta, writeMeta} from './meta.js'
import {checkName, isValidName} from './names.js'
import {removeStaging} from './staging.js'
import {WaferStore, isDirectory} from './store.js'

const JOURNAL_PREFIX = '.split-'

/** Why a journal is left alone, in words that finish "JOURNAL was left as it is: ...". */
class JournalRefused extends Error {}

const DIRECTORY = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW

/** What a split does, as its journal records it. */
export interface SplitPlan {
  /** The new wafer below `wafer`, which takes its files. */
  below: string
  /**
   * Files (paths relative to `data`, each a regular file with one name) that the new wafer holds
   * with their content emptied and their mtime (ns, as a decimal) kept, while `wafer`'s own new
   * `data` keeps a whole copy: what a layer leaves out (a machine id) without changing the stack.
   */
  emptied: Array<{mtimeNs: string; path: string}>
  /** The parent `wafer` had, which the new wafer takes; absent for a base wafer. */
  parent?: string
  wafer: string
}

/**
 * Splits wafer `plan.wafer` (see the module's comment): the new wafer `plan.below`, with `meta`,
 * takes its files, and it sits on `plan.below` with an empty `data` whose root has the owner,
 * mode, times and attributes the old root had (overlay's own markers aside). The caller holds the
 * store lock and has checked that nothing uses the wafer or anything built on it, that its parent
 * is `plan.parent`, and that no `plan.below` exists.
 */
export async function splitWafer(store: WaferStore, plan: SplitPlan, meta: WaferMeta): Promise<void> {
  const {below, wafer} = plan
  checkName(below)
  const journal = journalOf(store, wafer)
  if (splitLeft(store, wafer)) {
    throw new WafersError(`${journal} is left from an earlier split of ${wafer}; nothing was changed.`)
  }

  const data = store.dataDir(wafer)
  // `~` is in no wafer name, so this is never taken for the journal of another wafer.
  const making = path.join(store.root, `${JOURNAL_PREFIX}~${wafer}-${randomBytes(6).toString('hex')}`)
  await fs.mkdir(making, {mode: 0o700})
  try {
    const fresh = path.join(making, 'fresh')
    await fs.mkdir(fresh)
    await copyEmptied(data, fresh, plan.emptied)
    const made = path.join(making, 'wafer')
    await fs.mkdir(made)
    await fs.mkdir(path.join(made, 'work'))
    if (plan.parent !== undefined) await fs.writeFile(path.join(made, 'parent'), `${checkName(plan.parent)}\n`)
    writeMeta(made, meta)
    await fs.chmod(made, 0o755)
    writeFileAtomic(path.join(making, 'plan.json'), `${JSON.stringify(plan)}\n`, 0o600)
    await fs.rename(making, journal)
  } catch (error) {
    await removeStaging(store.root, making).catch(() => {})
    throw error
  }

  // From here on the journal says what to do: first the wafer is pointed at the new one (its
  // stack is then refused, not wrong, until the split is done), then its files move.
  await store.writeParent(wafer, below)
  await fs.rename(data, path.join(journal, 'wafer', 'data'))
  try {
    await settleJournal(store, journal, wafer)
  } catch (error) {
    if (!(error instanceof JournalRefused)) throw error
    throw new WafersError(`the split of ${wafer} stopped midway (${error.message}); ${journal} holds its files.`)
  }
}

/**
 * Finishes or undoes every split a killed command left in `store` (see the module's comment).
 * Call it under the store lock. A journal this code could not have left (not a real directory of
 * ours, a plan it did not write, a symlink anywhere in it) is left as it is, never followed: the
 * sentences returned say which, and its wafer is not split again until it is removed by hand.
 */
export async function finishSplits(store: WaferStore): Promise<string[]> {
  let entries: string[]
  try {
    entries = await fs.readdir(store.root)
  } catch {
    return []
  }

  const notes: string[] = []
  for (const entry of entries.filter((name) => name.startsWith(JOURNAL_PREFIX)).sort()) {
    const journal = path.join(store.root, entry)
    try {
      await settleJournal(store, journal, entry.slice(JOURNAL_PREFIX.length))
    } catch (error) {
      const why = error instanceof JournalRefused ? error.message : 'it could not be read or finished'
      notes.push(`${journal} was left as it is: ${why}; look at it and remove it by hand.`)
    }
  }

  return notes
}

/**
 * Finishes the splits left in `store` (under its lock, as finishSplits) and refuses, in one
 * sentence, when one of `wafers` still has a journal wafers could not finish: mv or rm would
 * otherwise take the wafer from under the files the journal holds.
 */
export async function refuseUnfinishedSplits(store: WaferStore, wafers: string[], doing: string): Promise<void> {
  const {withLock} = await import('./lock.js')
  await withLock(store.root, async () => {
    const notes = await finishSplits(store)
    const left = wafers.find((wafer) => splitLeft(store, wafer))
    if (left === undefined) return
    const journal = journalOf(store, left)
    const note = notes.find((line) => line.startsWith(`${journal} `))
    throw new WafersError(
      `wafer ${left} has a split that wafers could not finish (${journal}), so wafers ${doing}; nothing was changed.`,
      {suggestions: [note ?? `Look at ${journal} and remove it by hand, then run this again.`]},
    )
  })
}

/**
 * Opens directory `name` in the directory open on `dir` (the store's root: a path), never
 * through a symlink; undefined when there is nothing by that name. With `ours`, it must also be
 * owned by us and writable by nobody else, as every directory a split makes is.
 */
function openDirectoryIn(dir: number | string, name: string, ours: boolean): number | undefined {
  const file = typeof dir === 'number' ? `/proc/self/fd/${dir}/${name}` : path.join(dir, name)
  let fd: number
  try {
    fd = openSync(file, DIRECTORY)
  } catch (error) {
    if (isErrno(error, 'ENOENT')) return undefined
    throw new JournalRefused(`its ${name} is not a real directory`)
  }

  const stat = fstatSync(fd)
  if (ours && (stat.uid !== process.getuid?.() || (stat.mode & 0o022) !== 0)) {
    closeSync(fd)
    throw new JournalRefused(`its ${name} is not a directory wafers made`)
  }

  return fd
}

/** Finishes or undoes the split journalled in `journal` (named for wafer `wafer`). */
async function settleJournal(store: WaferStore, journal: string, wafer: string): Promise<void> {
  // Half made: the wafer was not touched yet.
  if (wafer.startsWith('~')) {
    await removeStaging(store.root, journal)
    return
  }

  if (!isValidName(wafer)) throw new JournalRefused("its name is no wafer's")
  const held = openDirectoryIn(store.root, path.basename(journal), true)
  if (held === undefined) return
  const fds = [held]
  try {
    const plan = readPlan(`/proc/self/fd/${held}`, wafer)
    // Written before the journal was renamed into place, so gone only when its removal, the
    // split's last step, was cut short.
    if (plan === 'gone') {
      await removeStaging(store.root, journal)
      return
    }

    if (plan === undefined) throw new JournalRefused('its plan.json is not one wafers wrote')
    const made = openDirectoryIn(held, 'wafer', true)
    if (made !== undefined) fds.push(made)
    const data = made === undefined ? undefined : openDirectoryIn(made, 'data', false)
    if (data !== undefined) fds.push(data)
    if (made !== undefined && data === undefined) {
      // The files never moved: the wafer gets its parent back, as it was.
      if ((await store.exists(plan.wafer)) && (await store.readParent(plan.wafer)) === plan.below) {
        await store.writeParent(plan.wafer, plan.parent)
      }

      await removeStaging(store.root, journal)
      return
    }

    await finishSplit(store, journal, held, plan, made === undefined ? undefined : {data: data!, made})
  } finally {
    for (const fd of fds) closeSync(fd)
  }
}

/**
 * The steps after the files moved into the journal (open on `held`, its new wafer and that
 * wafer's data open in `open`), each done again safely if it was done.
 */
async function finishSplit(
  store: WaferStore,
  journal: string,
  held: number,
  plan: SplitPlan,
  open: undefined | {data: number; made: number},
): Promise<void> {
  if (open !== undefined) {
    for (const file of plan.emptied) emptyFile(open.data, file.path, BigInt(file.mtimeNs))
    // Made by another pull while this split was stopped midway: that one is the same layer, and
    // this copy goes with the journal below.
    if (!(await store.exists(plan.below))) {
      const made = `/proc/self/fd/${held}/wafer`
      if (!sameFile(made, open.made)) throw new JournalRefused('its wafer was replaced while it was read')
      await fs.rename(made, store.dir(plan.below))
    }
  }

  // Its root has the owner and mode of the wafer's old data root: the journal's own mode guards it.
  const fresh = openDirectoryIn(held, 'fresh', false)
  if (fresh !== undefined) {
    try {
      if ((await store.exists(plan.wafer)) && !(await isDirectory(store.dataDir(plan.wafer)))) {
        const file = `/proc/self/fd/${held}/fresh`
        if (!sameFile(file, fresh)) throw new JournalRefused('its fresh data was replaced while it was read')
        await fs.rename(file, store.dataDir(plan.wafer))
      }
    } finally {
      closeSync(fresh)
    }
  }

  await removeStaging(store.root, journal)
}

/** Whether `file` (not followed) is the very directory open on `fd`. */
function sameFile(file: string, fd: number): boolean {
  const named = lstatSync(file, {throwIfNoEntry: false})
  const opened = fstatSync(fd)
  return named !== undefined && named.isDirectory() && named.dev === opened.dev && named.ino === opened.ino
}

/**
 * Whether a split of `wafer` that finishSplits could not read is still there (`.split-NAME`
 * with a plan this code did not write): it stays until removed by hand.
 */
export function splitLeft(store: WaferStore, wafer: string): boolean {
  return lstatSync(journalOf(store, wafer), {throwIfNoEntry: false}) !== undefined
}

function journalOf(store: WaferStore, wafer: string): string {
  return path.join(store.root, `${JOURNAL_PREFIX}${checkName(wafer)}`)
}

/**
 * The plan in `journal`, when it is one for wafer `wafer` that this code could have written
 * (valid wafer names, paths relative and without `.` or `..`); 'gone' when there is none.
 */
function readPlan(journal: string, wafer: string): 'gone' | SplitPlan | undefined {
  try {
    const text = readStoreFile(path.join(journal, 'plan.json'), `the plan of ${journal}`)
    if (text === undefined) return 'gone'
    const plan = JSON.parse(text) as SplitPlan
    if (typeof plan !== 'object' || plan === null || !Array.isArray(plan.emptied)) return undefined
    const names = [plan.wafer, plan.below, ...(plan.parent === undefined ? [] : [plan.parent])]
    if (plan.wafer !== wafer || !names.every((name) => typeof name === 'string' && isValidName(name))) return undefined
    if (plan.below === plan.wafer || plan.parent === plan.wafer) return undefined
    for (const file of plan.emptied) {
      if (
        typeof file !== 'object' ||
        file === null ||
        typeof file.path !== 'string' ||
        typeof file.mtimeNs !== 'string' ||
        !/^-?\d+$/.test(file.mtimeNs) ||
        file.path.split('/').some((part) => part === '' || part === '.' || part === '..')
      )
        return undefined
    }

    return plan
  } catch {
    return undefined
  }
}

/**
 * Empties regular file `rel` under the data open on `data`, its mtime then set back to `mtimeNs`
 * (to the µs a pack keeps), reaching it one component at a time without following any symlink.
 * Nothing there (or not a regular file with one name) is left alone; a directory on the way that
 * is a symlink or no directory refuses the journal.
 */
function emptyFile(data: number, rel: string, mtimeNs: bigint): void {
  const parts = rel.split('/')
  let dir = openSync(`/proc/self/fd/${data}/.`, DIRECTORY)
  try {
    for (const part of parts.slice(0, -1)) {
      let next: number
      try {
        next = openSync(`/proc/self/fd/${dir}/${part}`, DIRECTORY)
      } catch (error) {
        if (isErrno(error, 'ENOENT')) return
        throw new JournalRefused(`${rel} in its wafer's data is not reached through directories alone`)
      }

      closeSync(dir)
      dir = next
    }

    let fd: number
    try {
      fd = openSync(
        `/proc/self/fd/${dir}/${parts.at(-1)}`,
        constants.O_WRONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK,
      )
    } catch {
      return
    }

    try {
      const stat = fstatSync(fd, {bigint: true})
      if (!stat.isFile() || stat.nlink !== 1n) return
      ftruncateSync(fd, 0)
      futimesSync(fd, utimesSeconds(stat.atimeNs), utimesSeconds(mtimeNs))
    } finally {
      closeSync(fd)
    }
  } finally {
    closeSync(dir)
  }
}

/**
 * Copies into `fresh` what the wafer's own new data keeps of `data`: each emptied file whole, with
 * its directories, and the owner, mode, attributes and times of each and of `data` itself. `data`
 * is walked by descriptor, never through a symlink: a directory of it swapped for a link to the
 * host's /etc as the split runs makes it refuse, not copy the host's machine id into the wafer.
 */
async function copyEmptied(data: string, fresh: string, emptied: SplitPlan['emptied']): Promise<void> {
  const copy: Copy = {data, fresh, times: []}
  const root = openSync(data, DIRECTORY)
  try {
    for (const {path: rel} of emptied) await copyEmptiedFile(root, rel, copy)
    const stat = fstatSync(root, {bigint: true})
    await copyAttributes(`/proc/self/fd/${root}/.`, stat, fresh)
    copy.times.push([stat, fresh])
  } finally {
    closeSync(root)
  }

  // Times go last, innermost first, as what is made inside a directory changes its mtime.
  for (const [from, to] of copy.times.reverse()) {
    await fs.utimes(to, utimesSeconds(from.atimeNs), utimesSeconds(from.mtimeNs))
  }
}

/** What copyEmptied copies from and to, and the times it sets once all is made. */
interface Copy {
  data: string
  fresh: string
  times: Array<[from: BigIntStats, to: string]>
}

/** Copies `rel` of the data open as `root`, and each of its directories not copied yet. */
async function copyEmptiedFile(root: number, rel: string, copy: Copy): Promise<void> {
  const parts = rel.split('/')
  const refuse = (what: string) => new WafersError(`${path.join(copy.data, rel)} ${what}; nothing was changed.`)
  let dir = openSync(`/proc/self/fd/${root}/.`, DIRECTORY)
  try {
    for (const [index, part] of parts.slice(0, -1).entries()) {
      const next = tryOpen(`/proc/self/fd/${dir}/${part}`, DIRECTORY)
      if (next === undefined) throw refuse('is not reached through directories alone')
      closeSync(dir)
      dir = next
      const to = path.join(copy.fresh, ...parts.slice(0, index + 1))
      if (lstatSync(to, {throwIfNoEntry: false}) !== undefined) continue
      await fs.mkdir(to)
      const stat = fstatSync(dir, {bigint: true})
      await copyAttributes(`/proc/self/fd/${dir}/.`, stat, to)
      copy.times.push([stat, to])
    }

    const name = `/proc/self/fd/${dir}/${parts.at(-1)}`
    const file = tryOpen(name, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    if (file === undefined) throw refuse('is no longer a file')
    try {
      const stat = fstatSync(file, {bigint: true})
      if (!stat.isFile() || stat.nlink !== 1n) throw refuse('is no longer a file with one name')
      const to = path.join(copy.fresh, rel)
      await fs.copyFile(`/proc/self/fd/${file}`, to, constants.COPYFILE_EXCL)
      // The binding reads attributes by name, never following the last one: the name in the
      // directory held open, checked afterwards to still be the file opened.
      await copyAttributes(name, stat, to)
      const named = lstatSync(name, {bigint: true, throwIfNoEntry: false})
      if (named?.ino !== stat.ino || named.dev !== stat.dev) throw refuse('was replaced while it was copied')
      copy.times.push([stat, to])
    } finally {
      closeSync(file)
    }
  } finally {
    closeSync(dir)
  }
}

function tryOpen(file: string, flags: number): number | undefined {
  try {
    return openSync(file, flags)
  } catch {
    return undefined
  }
}

/**
 * Gives `to` the owner and mode of `stat` and the attributes of `from` (in that order: a chown
 * clears setuid bits and file capabilities). Overlay's own attributes are not copied: an opaque
 * mark on the new upper would hide the wafer below it; escaped ones, which are the files' own, are.
 */
async function copyAttributes(from: string, stat: BigIntStats, to: string): Promise<void> {
  const xattr = await loadXattr()
  await fs.lchown(to, Number(stat.uid), Number(stat.gid))
  await fs.chmod(to, Number(stat.mode) & 0o7777)
  for (const name of xattr.listAttributesSync(from)) {
    if (packedAttribute(name).action !== 'keep') continue
    const value = xattr.getAttributeSync(from, name)
    if (value !== null) xattr.setAttributeSync(to, name, value)
  }
}
