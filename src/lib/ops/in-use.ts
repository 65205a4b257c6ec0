import {readdirSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {readStoreFile} from '../host/files.js'
import {hiddenUseOf, hiddenWaferUses} from '../mount/usage.js'
import {isValidName} from '../store/names.js'
import {stageHeld} from '../store/staging.js'
import {WaferStore, parseParent} from '../store/store.js'
import {Inventory} from './inventory.js'

/** One way a wafer is in use right now, in words that finish "wafer NAME ...". */
export interface WaferUse {
  how: string
  /** `top`: its data is a stack's writable layer (or its files are open); `lower`: read-only under one. */
  role: 'lower' | 'top'
  wafer: string
}

/**
 * Every use of `names` that rm refuses too: the writable top or a lower layer of a live stack
 * (from the mount table), a stack detached with --lazy that processes still use, a stack in another
 * mount namespace, processes working in a wafer's own files. Empty when none of them is in use.
 */
export async function usesOf(store: WaferStore, inventory: Inventory, names: Iterable<string>): Promise<WaferUse[]> {
  const wanted = new Set(names)
  const found: WaferUse[] = []
  for (const name of wanted) {
    const wafer = inventory.wafers.get(name)
    if (wafer?.mountpoint) found.push({how: `is stacked at ${wafer.mountpoint}`, role: 'top', wafer: name})
    for (const mountpoint of wafer?.lowerOf ?? []) {
      found.push({how: `is a lower layer of the stack at ${mountpoint}`, role: 'lower', wafer: name})
    }
  }

  for (const use of await hiddenWaferUses(store, {openFiles: true})) {
    for (const name of use.wafers.filter((wafer) => wanted.has(wafer))) {
      const {how, role} = hiddenUseOf(use, name)
      found.push({how: `is ${how}`, role, wafer: name})
    }
  }

  return found
}

/** Refuses, in one sentence naming the first use, when any of `names` is in use (see usesOf). */
export async function refuseInUse(
  store: WaferStore,
  inventory: Inventory,
  names: Iterable<string>,
  doing: string,
): Promise<void> {
  const [use] = await usesOf(store, inventory, names)
  if (use === undefined) return
  throw new WafersError(`wafer ${use.wafer} ${use.how}, so wafers ${doing}; nothing was changed.`, {
    suggestions: ['Unstack it (wafers unstack NAME) or stop what uses it, then run this again.'],
  })
}

/** What creates and builds running right now are doing in the store, from their held stages. */
export interface InFlight {
  /** Whether a build holds its stage (it may take any `build-` wafer as a cached step next). */
  build: boolean
  /** Whether a pull is unpacking a layer (its `.create-layer-...` stage is held). */
  layer: boolean
  /** The parents named by the wafers being made in those stages: each must stay. */
  parents: string[]
}

/**
 * The stages (`.create-*`) of creates, pulls and builds that still run, by their lock (never a
 * PID), and the parents the wafers they are making name. Call it under the store lock: a new
 * stage is made only under it, so none can appear unseen until the lock is released.
 */
export async function inFlight(store: WaferStore): Promise<InFlight> {
  const result: InFlight = {build: false, layer: false, parents: []}
  let entries: string[]
  try {
    entries = readdirSync(store.root)
  } catch {
    return result
  }

  for (const entry of entries.filter((name) => name.startsWith('.create-'))) {
    if (!(await stageHeld(store.root, entry))) continue
    if (entry.startsWith('.create-build-')) result.build = true
    if (entry.startsWith('.create-layer-')) result.layer = true
    const stage = path.join(store.root, entry)
    // The stage's own wafer, and (a build's stage) the step wafers made inside it.
    const inner = (() => {
      try {
        return readdirSync(stage, {withFileTypes: true})
          .filter((dirent) => dirent.isDirectory())
          .map((dirent) => path.join(stage, dirent.name))
      } catch {
        return []
      }
    })()
    for (const dir of [stage, ...inner]) {
      try {
        const text = readStoreFile(path.join(dir, 'parent'), `the parent file in ${dir}`)
        const parent = text === undefined ? undefined : parseParent(path.basename(dir), text)
        if (parent !== undefined && isValidName(parent)) result.parents.push(parent)
      } catch {
        // A parent file that cannot be read names nothing to keep.
      }
    }
  }

  return result
}
