import {promises as fs, lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {checkRoot} from '../host/system.js'
import {traceAncestry} from '../store/ancestry.js'
import {withLock} from '../store/lock.js'
import {refuseUnfinishedSplits} from '../store/split.js'
import {checkName} from '../store/names.js'
import {Locations, WaferStore} from '../store/store.js'
import {plural} from '../ui/render.js'
import {inFlight, refuseInUse} from './in-use.js'
import {Inventory, descendants, readInventory} from './inventory.js'
import {unitName} from './enable.js'
import {linksByTarget} from './remove.js'

/** What `mv` did, as `--json` prints it. */
export interface MoveResult {
  /** The wafers whose parent file now names `to`, in name order. */
  children: string[]
  from: string
  to: string
}

/**
 * Renames wafer `from` to `to` and re-points every child's parent file at `to`. Refused while
 * `from`, anything below it or anything built on it is in use (stacked, a lower layer, in any
 * mount namespace), a create or build is making a wafer on it, or `wafers enable` stacks it at
 * boot (a unit in `options.units`); runs under the store lock.
 *
 * The order is crash-safe: first the wafer's directory is renamed (one rename(2): before it
 * nothing changed, after it `to` is the whole wafer), then each child's parent file is replaced
 * atomically, then the stale short links go. A crash in between leaves children that still name
 * `from`; running the same `wafers mv FROM TO` again finds `from` gone, `to` there and those
 * children, and finishes re-pointing them.
 */
export async function moveWafer(
  locations: Locations,
  from: string,
  to: string,
  options: {units?: string} = {},
): Promise<MoveResult> {
  checkName(from)
  checkName(to)
  checkRoot()
  const store = new WaferStore(locations.wafers)
  return withLock(store.root, async () => {
    // A split a pull left midway holds the wafer's files in its journal: finished first, as a
    // rename would leave them behind for good.
    await refuseUnfinishedSplits(store, [from, to], `cannot rename ${from}`)
    const inventory = await readInventory(store, {stacks: locations.stacks})
    const orphans = [...inventory.wafers.values()].filter((wafer) => wafer.parent === from).map((wafer) => wafer.name)
    if (!inventory.wafers.has(from)) {
      if (inventory.wafers.has(to) && orphans.length > 0) return finish(store, inventory, from, to, orphans)
      throw new WafersError(`wafer ${from} not found in ${store.root}.`)
    }

    if (from === to) throw new WafersError(`wafer ${from} already has that name; nothing was changed.`)
    if (await store.exists(to))
      throw new WafersError(`wafer ${to} already exists in ${store.root}; nothing was renamed.`)
    // A boot unit names the wafer it stacks: renamed, it would stack nothing at the next boot.
    const unit = options.units === undefined ? undefined : path.join(options.units, unitName(from))
    if (unit !== undefined && lstatSync(unit, {throwIfNoEntry: false}) !== undefined) {
      throw new WafersError(`wafer ${from} is stacked at boot by ${unit}; nothing was renamed.`, {
        suggestions: [`wafers disable ${from}, then wafers mv ${from} ${to} and wafers enable ${to}`],
      })
    }

    const chain = await traceAncestry(store, from)
    await refuseInUse(store, inventory, [...chain, ...descendants(inventory, from)], `cannot rename ${from}`)
    if ((await inFlight(store)).parents.includes(from)) {
      throw new WafersError(
        `a create or build is making a wafer on ${from} right now; rename it when that is done. Nothing was renamed.`,
      )
    }

    await fs.rename(store.dir(from), store.dir(to))
    if (!lstatSync(store.dir(to)).isDirectory()) {
      await fs.rename(store.dir(to), store.dir(from))
      throw new WafersError(`${store.dir(from)} was replaced by something else meanwhile; nothing was renamed.`)
    }

    return finish(store, inventory, from, to, orphans)
  })
}

/** The second half of a rename (see moveWafer): children re-pointed, stale short links removed. */
async function finish(
  store: WaferStore,
  inventory: Inventory,
  from: string,
  to: string,
  children: string[],
): Promise<MoveResult> {
  await refuseInUse(store, inventory, [to, ...children], `cannot finish renaming ${from} to ${to}`)
  for (const child of children) await store.writeParent(child, to)
  // Stacks find their layers through `.links/ID -> ../NAME/data`: links to the old name point at
  // nothing now, and one for the new name is made when it is next stacked.
  for (const link of (await linksByTarget(store)).get(path.join('..', from, 'data')) ?? []) {
    await fs.rm(path.join(store.linksDir, link), {force: true})
  }

  return {children, from, to}
}

/** One line for a human: "renamed a to b (2 children re-pointed)". */
export function moveSummary(result: MoveResult): string {
  const children =
    result.children.length === 0 ? '' : ` (${plural(result.children.length, 'child', 'children')} re-pointed)`
  return `renamed ${result.from} to ${result.to}${children}`
}
