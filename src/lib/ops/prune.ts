import type {HookRunner, PruneCandidate} from '../hooks.js'
import {oneLine} from '../hooks.js'
import {checkRoot} from '../host/system.js'
import {withLock} from '../store/lock.js'
import {readMeta} from '../store/meta.js'
import {Locations, WaferStore} from '../store/store.js'
import {inFlight, usesOf} from './in-use.js'
import {Inventory, WaferInfo, compare, diskUsage, readInventory} from './inventory.js'
import {removeWafers} from './remove.js'

/** What kind of thing prune removes. */
export type PruneKind = 'build' | 'cache' | 'layer'

/** One thing prune removed (or, with --dry-run, would remove). */
export interface PrunedItem {
  kind: PruneKind
  /** A wafer's name, or for a cache what its owner calls it. */
  name: string
  /** For a cache: the file or directory. */
  path?: string
  /** Bytes it takes (took) on disk. */
  size: number
}

/** What `prune` did, as `--json` prints it. */
export interface PruneResult {
  /** Bytes freed (with --dry-run: that would be freed). */
  bytes: number
  dryRun: boolean
  items: PrunedItem[]
  /** Why some kinds were left alone this time (a pull or build running, a plugin failing). */
  notes: string[]
}

/**
 * Caches outside the wafers (the push cache, a plugin's downloads) that prune may empty; `remaining`
 * is the wafers that stay. Called under the store lock.
 */
export type CacheSource = (remaining: Set<string>) => Promise<{candidates: PruneCandidate[]; notes?: string[]}>

export interface PruneOptions {
  /** Other caches prune empties (oci's push cache: oci comes after ops, so it is handed in). */
  caches?: CacheSource[]
  dryRun?: boolean
  hooks?: HookRunner
  /** Whether a pull runs now (it may reuse any image layer wafer next); layer wafers then stay. */
  pullRunning?: () => Promise<boolean>
}

/**
 * Removes what nothing uses: image layer wafers (`layer-...`) and build step wafers (`build-...`)
 * that no other wafer is built on and no stack, build or pull uses, then the caches handed in and
 * those plugins name through `wafers:prune`. Everything is decided and removed under the store lock,
 * under which every pull and push registers (its work directory) before it looks for wafers to
 * reuse, and a build when it opens its stage. A build opens its stage at its first step that is
 * not cached, and then checks that the steps it found cached before are all still there; a build
 * whose every step is cached opens none and is not seen. If prune removes a step such a build has
 * just found, the build fails in one sentence, changing nothing: it checks again under the lock
 * when it makes or re-points NAME.
 */
export async function prune(locations: Locations, options: PruneOptions = {}): Promise<PruneResult> {
  checkRoot()
  const store = new WaferStore(locations.wafers)
  const result: PruneResult = {bytes: 0, dryRun: Boolean(options.dryRun), items: [], notes: []}
  await withLock(store.root, async () => {
    const inventory = await readInventory(store, {stacks: locations.stacks})
    const wafers = await prunableWafers(store, inventory, options, result.notes)
    const sizes = await Promise.all(wafers.map(async (name) => diskUsage(store.dir(name))))
    for (const [i, name] of wafers.entries()) {
      result.items.push({kind: inventory.wafers.get(name)!.layer ? 'layer' : 'build', name, size: sizes[i]})
    }

    if (!options.dryRun && wafers.length > 0) await removeWafers(store, wafers)
    const remaining = new Set([...inventory.wafers.keys()].filter((name) => !wafers.includes(name)))
    const sources = [...(options.caches ?? []), ...(options.hooks ? [pluginCaches(options.hooks, result.notes)] : [])]
    for (const source of sources) {
      const {candidates, notes = []} = await source(remaining)
      result.notes.push(...notes)
      for (const candidate of candidates) {
        if (!options.dryRun) {
          try {
            await candidate.remove()
          } catch (error) {
            result.notes.push(`${candidate.name} was not removed: ${oneLine(error)}`)
            continue
          }
        }

        result.items.push({kind: 'cache', name: candidate.name, path: candidate.path, size: candidate.size})
      }
    }
  })
  result.bytes = result.items.reduce((sum, item) => sum + item.size, 0)
  return result
}

/** The wafers a pull or build made that nothing uses, deepest first; notes say what was left alone and why. */
async function prunableWafers(
  store: WaferStore,
  inventory: Inventory,
  options: PruneOptions,
  notes: string[],
): Promise<string[]> {
  const unreadable = [...inventory.wafers.values()].filter((wafer) => wafer.problem && wafer.parent === null)
  if (unreadable.length > 0) {
    // Its parent could be any layer or step wafer: removing one might break it.
    notes.push(
      `no wafer was pruned: the parent of ${unreadable.map((wafer) => wafer.name).join(', ')} cannot be read (${unreadable[0].problem})`,
    )
    return []
  }

  const flight = await inFlight(store)
  const pulling = flight.layer || (await options.pullRunning?.()) === true
  if (flight.build) notes.push('build step wafers were left alone: a build is running')
  if (pulling) notes.push('image layer wafers were left alone: a pull is running')
  const keep = new Set<string>()
  const keepWithAncestors = (start: string) => {
    for (let name: null | string | undefined = start; name && !keep.has(name);) {
      keep.add(name)
      name = inventory.wafers.get(name)?.parent
    }
  }

  const candidates: WaferInfo[] = []
  for (const wafer of inventory.wafers.values()) {
    const kind = madeBy(store, wafer)
    if (kind === undefined || (kind === 'build' && flight.build) || (kind === 'layer' && pulling)) {
      keepWithAncestors(wafer.name)
    } else {
      candidates.push(wafer)
    }
  }

  for (const parent of flight.parents) keepWithAncestors(parent)
  for (const use of await usesOf(
    store,
    inventory,
    candidates.map((wafer) => wafer.name),
  ))
    keepWithAncestors(use.wafer)
  return candidates
    .filter((wafer) => !keep.has(wafer.name))
    .sort((a, b) => b.depth - a.depth || compare(a.name, b.name))
    .map((wafer) => wafer.name)
}

/** `layer` for an image layer wafer a pull made, `build` for a build's step wafer, undefined for a wafer someone named. */
function madeBy(store: WaferStore, wafer: WaferInfo): PruneKind | undefined {
  if (/^layer-[0-9a-f]{32}$/.test(wafer.name) && wafer.layer !== undefined) return 'layer'
  if (!/^build-[0-9a-f]{40}$/.test(wafer.name)) return undefined
  try {
    return readMeta(store.dir(wafer.name), wafer.name).build === undefined ? undefined : 'build'
  } catch {
    return undefined
  }
}

/** The caches plugins offer through `wafers:prune`; a plugin that fails is noted, never fatal. */
function pluginCaches(hooks: HookRunner, notes: string[]): CacheSource {
  return async () => {
    if (!hooks.has('wafers:prune')) return {candidates: []}
    const outcome = await hooks.run('wafers:prune', {})
    for (const {error, plugin} of outcome.failures)
      notes.push(`the wafers:prune hook of ${plugin} failed: ${oneLine(error)}`)
    const candidates: PruneCandidate[] = []
    for (const {plugin, result} of outcome.successes) {
      for (const candidate of Array.isArray(result) ? result : []) {
        if (!isCandidate(candidate)) {
          notes.push(`the wafers:prune hook of ${plugin} returned something that is not {name, path, size, remove}`)
          continue
        }

        candidates.push(candidate)
      }
    }

    return {candidates}
  }
}

function isCandidate(value: unknown): value is PruneCandidate {
  const candidate = value as PruneCandidate
  return (
    typeof candidate === 'object' &&
    candidate !== null &&
    typeof candidate.name === 'string' &&
    typeof candidate.path === 'string' &&
    typeof candidate.size === 'number' &&
    typeof candidate.remove === 'function'
  )
}
