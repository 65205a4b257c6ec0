import {WafersError} from '../errors.js'
import {checkRoot} from '../host/system.js'
import {traceAncestry} from '../store/ancestry.js'
import {withLock} from '../store/lock.js'
import {type ImageMeta, readMeta} from '../store/meta.js'
import {checkName} from '../store/names.js'
import {Locations, WaferStore} from '../store/store.js'
import {copyTree} from './copy.js'
import {readInventory} from './inventory.js'
import {refuseWritable, withMergedView} from './merged.js'
import {promises as fs} from 'node:fs'
import path from 'node:path'

/** What `flatten` made, as `--json` prints it. */
export interface FlattenResult {
  /** The new base wafer. */
  name: string
  source: string
  /** The wafers whose merged view it holds, top first. */
  wafers: string[]
}

/**
 * Makes `target` a base wafer holding `name`'s merged view: what a container on `name`'s stack
 * sees, with owners, modes, timestamps, xattrs (file capabilities included), hard links and
 * devices, and no whiteout or overlay attribute. The nearest image config of the stack comes
 * along. Refuses a `target` that exists and a stack one of whose wafers is writable right now
 * (see refuseWritable). Runs under the store lock, so that no stack comes up meanwhile.
 */
export async function flattenWafer(locations: Locations, name: string, target: string): Promise<FlattenResult> {
  checkName(name)
  checkName(target)
  checkRoot()
  const store = new WaferStore(locations.wafers)
  return withLock(store.root, async () => {
    const inventory = await readInventory(store, {stacks: locations.stacks})
    if (!inventory.wafers.has(name)) throw new WafersError(`wafer ${name} not found in ${store.root}.`)
    if (await store.exists(target)) {
      throw new WafersError(`wafer ${target} already exists in ${store.root}; nothing was flattened.`)
    }

    const wafers = await traceAncestry(store, name)
    await refuseWritable(store, inventory, wafers, 'flatten')
    const image = nearestImage(store, wafers)
    await store.create(target, undefined, {
      async fill(data) {
        // Inside the new wafer's stage, which only wafers may write to; removed before it appears.
        const scratch = path.join(path.dirname(data), 'flatten')
        await fs.mkdir(scratch, {mode: 0o700})
        await withMergedView(store, wafers, scratch, async (root) => copyTree(root, data))
        await fs.rmdir(scratch)
      },
      ...(image ? {meta: {image}} : {}),
    })
    return {name: target, source: name, wafers}
  })
}

/** The image config of the nearest wafer of `wafers` (top first) that has one. */
export function nearestImage(store: WaferStore, wafers: string[]): ImageMeta | undefined {
  for (const wafer of wafers) {
    try {
      const {image} = readMeta(store.dir(wafer), wafer)
      if (image) return image
    } catch {
      // A meta.json that cannot be read says nothing.
    }
  }

  return undefined
}
