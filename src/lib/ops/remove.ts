import {randomBytes} from 'node:crypto'
import {promises as fs, lstatSync, readdirSync, rmdirSync, unlinkSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {removeTree} from '../host/files.js'
import {mountsUnder, readMountTable} from '../host/mounts.js'
import {checkLinksDir} from '../store/links.js'
import {hiddenWaferUses, liveStacks} from '../mount/usage.js'
import {checkRoot} from '../host/system.js'
import {plural} from '../ui/render.js'
import {WaferInfo, compare, descendants, readInventory} from './inventory.js'
import {checkName} from '../store/names.js'
import {removeStaging} from '../store/staging.js'
import {Locations, WaferStore} from '../store/store.js'
import {refuseUnfinishedSplits} from '../store/split.js'

/** What `rm` removed, as `--json` prints it. */
export interface RemoveResult {
  /** Wafer names in the order they were removed, deepest first. */
  removed: string[]
}

/**
 * The wafers to remove for `names`, deepest first (with `recursive`, every wafer built on them
 * too). Refuses, before anything is touched, a wafer that is missing, stacked, a lower layer of
 * a live stack, or that has children left behind without `recursive`.
 */
export async function planRemoval(
  locations: Locations,
  names: string[],
  options: {recursive?: boolean} = {},
): Promise<string[]> {
  for (const name of names) checkName(name)
  checkRoot()
  const store = new WaferStore(locations.wafers)
  // A split a pull left midway holds the wafer's files in its journal: finished first.
  await refuseUnfinishedSplits(store, names, 'cannot remove it')
  const stacks = await fs.realpath(locations.stacks).catch(() => locations.stacks)
  const inventory = await readInventory(store, {stacks})
  const asked = new Set(names)
  const targets = new Set<string>()
  for (const name of asked) {
    if (!inventory.wafers.has(name)) throw new WafersError(`wafer ${name} not found in ${store.root}.`)
    targets.add(name)
    const below = descendants(inventory, name)
    const left = below.filter((child) => !asked.has(child))
    if (left.length > 0 && !options.recursive) {
      const children = inventory.children.get(name) ?? []
      throw new WafersError(
        `wafer ${name} has ${plural(children.length, 'child', 'children')} (${children.join(', ')}) built on it; remove ${children.length === 1 ? 'it' : 'them'} first, or use --recursive to remove the whole subtree.`,
        {suggestions: [`wafers rm --recursive ${name}`]},
      )
    }

    for (const child of below) targets.add(child)
  }

  const order = [...targets].sort(
    (a, b) => inventory.wafers.get(b)!.depth - inventory.wafers.get(a)!.depth || compare(a, b),
  )
  for (const name of order) refuseInUse(inventory.wafers.get(name)!, asked, stacks)
  // What the mount table does not show: a stack detached with --lazy that a container still runs
  // in, a stack in another mount namespace, a process working in the wafer's own directory.
  const uses = await hiddenWaferUses(store, {openFiles: true})
  for (const name of order) {
    const use = uses.find((candidate) => candidate.wafers.includes(name))
    if (use === undefined) continue
    const who = asked.has(name) ? `wafer ${name}` : `wafer ${name}, in the subtree to remove,`
    const how = use.kind === 'files' ? ' through' : use.top === name ? ' as the top of' : ' as a layer of'
    throw new WafersError(`${who} is still in use${how} ${use.where}; nothing removed.`, {
      suggestions: [
        use.kind === 'namespace'
          ? 'Unmount it in that namespace, or stop its processes, first.'
          : 'Stop those processes first.',
      ],
    })
  }

  return order
}

/**
 * Removes `wafers` in the given order (deepest first, from planRemoval), each with its short link
 * in `.links`. Each wafer is first renamed to a hidden name, so it vanishes at once and an
 * interrupted removal leaves no half wafer behind. Checks the live mount table again first.
 */
export async function removeWafers(store: WaferStore, wafers: string[]): Promise<RemoveResult> {
  await refuseUnfinishedSplits(store, wafers, 'cannot remove it')
  const stacks = await liveStacks(store)
  for (const name of wafers) {
    const stack = stacks.find((live) => live.top === name || live.lowers.includes(name))
    if (stack) throw new WafersError(`wafer ${name} was stacked at ${stack.mountpoint} meanwhile; nothing removed.`)
  }

  // Something mounted inside a wafer (a bind of a host directory, a proc left by a seeder) would
  // stop the removal halfway, or worse: refuse it before anything is touched.
  const table = await readMountTable()
  for (const name of wafers) {
    const inside = mountsUnder(table, await fs.realpath(store.dir(name)))
    if (inside.length > 0) {
      throw new WafersError(
        `wafer ${name} has ${inside.map((entry) => entry.mountpoint).join(', ')} mounted inside; unmount ${inside.length === 1 ? 'it' : 'them'} first. Nothing removed.`,
      )
    }
  }

  await removeTrash(store)
  const links = await linksByTarget(store)
  const removed: string[] = []
  for (const name of wafers) {
    const trash = path.join(store.root, `.rm-${name}-${randomBytes(4).toString('hex')}`)
    await fs.rename(store.dir(name), trash)
    for (const link of links.get(path.join('..', name, 'data')) ?? []) {
      await fs.rm(path.join(store.linksDir, link), {force: true})
    }

    try {
      await removeTree(trash)
    } catch {
      // rm names the files it could not delete, one line each, with their whole paths: find the
      // first file that really cannot be deleted, and why, for one sentence.
      const stuck = firstUndeletable(trash)
      const done = removed.length > 0 ? ` (removed before it: ${removed.join(', ')})` : ''
      const what = stuck === undefined ? 'not all of its files' : `${stuck.file} (${stuck.why})`
      throw new WafersError(
        `wafer ${name} is gone from the store, but ${what} could not be deleted; what is left is in ${trash}, which the next wafers rm deletes${done}.`,
      )
    }

    removed.push(name)
  }

  return {removed}
}

/** Why a file could not be deleted, in words (errno codes only as a last resort, lower case). */
const WHY: Record<string, string> = {
  EACCES: 'permission denied',
  EBUSY: 'it is in use as a mount point',
  EPERM: 'operation not permitted: it may be immutable or append-only, see lsattr',
  EROFS: 'the file system is read-only',
}

/**
 * The first file under `dir` that cannot be deleted, and why, deleting what it can on the way
 * (never following a symlink: lstat, unlink of the link itself); undefined when all went.
 */
function firstUndeletable(dir: string): {file: string; why: string} | undefined {
  const why = (error: unknown) => {
    const code = (error as NodeJS.ErrnoException).code ?? 'unknown'
    return WHY[code] ?? code.toLowerCase()
  }

  let entries: string[]
  try {
    entries = readdirSync(dir)
  } catch (error) {
    return isErrno(error, 'ENOENT') ? undefined : {file: dir, why: why(error)}
  }

  for (const entry of entries) {
    const file = path.join(dir, entry)
    const stat = lstatSync(file, {throwIfNoEntry: false})
    if (stat === undefined) continue
    if (stat.isDirectory()) {
      const stuck = firstUndeletable(file)
      if (stuck !== undefined) return stuck
      continue
    }

    try {
      unlinkSync(file)
    } catch (error) {
      return {file, why: why(error)}
    }
  }

  try {
    rmdirSync(dir)
  } catch (error) {
    return {file: dir, why: why(error)}
  }

  return undefined
}

/** Deletes what earlier removals could not (`.rm-*`); the store lock is held, so none is under way. */
async function removeTrash(store: WaferStore): Promise<void> {
  const entries = await fs.readdir(store.root).catch(() => [] as string[])
  for (const entry of entries.filter((name) => name.startsWith('.rm-'))) {
    await removeStaging(store.root, path.join(store.root, entry)).catch(() => {})
  }
}

/** The short links in `.links`, grouped by what they point at (`../NAME/data`). */
export async function linksByTarget(store: WaferStore): Promise<Map<string, string[]>> {
  const byTarget = new Map<string, string[]>()
  checkLinksDir(store)
  let ids: string[]
  try {
    ids = await fs.readdir(store.linksDir)
  } catch (error) {
    if (isErrno(error, 'ENOENT')) return byTarget
    throw error
  }

  await Promise.all(
    ids.map(async (id) => {
      const target = await fs.readlink(path.join(store.linksDir, id)).catch(() => undefined)
      if (target === undefined) return
      byTarget.set(target, [...(byTarget.get(target) ?? []), id])
    }),
  )
  return byTarget
}

function refuseInUse(wafer: WaferInfo, asked: Set<string>, stacks: string): void {
  // A stack in $STACKS comes down with unstack; one mounted elsewhere by hand, with umount.
  const takeDown = (mountpoint: string) =>
    path.dirname(mountpoint) === stacks
      ? `wafers unstack ${path.basename(mountpoint).replace(/\.mstack$/, '')}`
      : `umount ${mountpoint}`
  const who = asked.has(wafer.name) ? `wafer ${wafer.name}` : `wafer ${wafer.name}, in the subtree to remove,`
  if (wafer.mountpoint !== null) {
    throw new WafersError(`${who} is stacked at ${wafer.mountpoint}; unstack it first.`, {
      suggestions: [takeDown(wafer.mountpoint)],
    })
  }

  if (wafer.lowerOf.length > 0) {
    const [first] = wafer.lowerOf
    throw new WafersError(`${who} is a lower layer of the stack at ${first}; unstack that first.`, {
      suggestions: [takeDown(first)],
    })
  }
}
