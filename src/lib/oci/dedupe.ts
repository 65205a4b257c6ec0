/**
 * Dedupe at pull: a layer that a named wafer here already holds (a base pushed and pulled back)
 * is not unpacked a second time. The push cache says which wafers a push packed into which
 * diffID; a wafer W is taken only when it still packs to the layer's diffID now (hashed, nothing
 * written), sits on the same layers (its parent is the pull's wafer of the layer below, or none
 * for the first), is a plain wafer (not an image's layer, top or build step) and neither it nor
 * anything built on it is in use (a push packing it included), and no file of it has a name in
 * another wafer; whatever stops these checks only means W is not split. Then W is split
 * (store/split.ts): its files become the layer wafer and W sits on it with an empty data of its
 * own, so W's stack shows what it showed, its later changes land in W alone, and the pulled image
 * never changes with it.
 */
import {lstatSync, readdirSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {readMeta, type WaferMeta} from '../store/meta.js'
import {WaferStore} from '../store/store.js'
import {LayerCache} from './cache.js'
import {hasMachineId, machineIdBlanker} from './machine-id.js'

/** The layer a pull is about to unpack. */
export interface WantedLayer {
  diffId: string
  /** The layer wafer's meta.json. */
  meta: WaferMeta
  /** The layer wafer. */
  name: string
  /** The wafer of the layer below, or undefined for the first layer. */
  parent: string | undefined
}

/** What became of a layer a wafer here may hold: split from `wafer`, or not, and why. */
export type ShareOutcome = {skipped: string; wafer: string} | {split: true; wafer: string} | undefined

/**
 * Makes layer wafer `layer.name` out of a named wafer that holds that very layer, splitting it
 * (see the module's comment). Undefined when no wafer here was packed into it, and the reason
 * when one was but is not split (in use, changed since its push); the pull then unpacks the layer.
 */
export async function shareLayer(
  stacks: string,
  store: WaferStore,
  layer: WantedLayer,
  options: {report?: (line: string) => void; signal?: AbortSignal} = {},
): Promise<ShareOutcome> {
  const cache = new LayerCache(store.root)
  let outcome: ShareOutcome
  for (const wafer of await cache.packedAs(layer.diffId)) {
    let tried: 'appeared' | 'split' | null | string
    try {
      tried = await trySplit(stacks, store, wafer, layer, options)
    } catch (error) {
      if (options.signal?.aborted) throw error
      // Whatever stops the check (a file wafers cannot pack, a journal it cannot read) only means
      // that this wafer is not taken: the layer is unpacked instead.
      const why = error instanceof WafersError ? error.message.replace(/\.$/, '') : 'its files could not all be read'
      tried = `checking ${wafer} failed: ${why}`
    }

    if (tried === null) continue
    // The layer wafer appeared meanwhile (another pull made it): the pull finds it there.
    if (tried === 'appeared') return undefined
    if (tried === 'split') {
      await cache.copyEntry(wafer, layer.name, layer.diffId, await layerFingerprintOf(store.dataDir(layer.name)))
      return {split: true, wafer}
    }

    outcome = {skipped: tried, wafer}
  }

  return outcome
}

/**
 * Whether shareLayer may take `layer` from a wafer here: one that the push cache says was packed
 * into its diffID, sitting where the layer does, made by hand or seeded. Cheap (nothing hashed,
 * nothing locked): a pull leaves such a layer out of its first download.
 */
export async function mayShareLayer(
  store: WaferStore,
  layer: Pick<WantedLayer, 'diffId' | 'parent'>,
): Promise<boolean> {
  for (const wafer of await new LayerCache(store.root).packedAs(layer.diffId)) {
    if ((await unsplittable(store, wafer, layer).catch(() => null)) === undefined) return true
  }

  return false
}

async function layerFingerprintOf(data: string): Promise<string> {
  const {layerFingerprint} = await import('../layer/archive.js')
  return layerFingerprint(data)
}

/**
 * Splits `wafer` into `layer` when it may be (see the module's comment): 'split' when it was,
 * 'appeared' when the layer wafer appeared meanwhile, null when `wafer` does not sit where the
 * layer does, and otherwise why it is not split.
 */
async function trySplit(
  stacks: string,
  store: WaferStore,
  wafer: string,
  layer: WantedLayer,
  options: {report?: (line: string) => void; signal?: AbortSignal},
): Promise<'appeared' | 'split' | null | string> {
  const refused = await unsplittable(store, wafer, layer)
  if (refused === null || refused !== undefined) return refused
  const use = await firstUse(stacks, store, wafer)
  if (use !== undefined) return use
  options.report?.(`checking that ${wafer} still holds the layer`)
  const {layerDiffId, layerFingerprint} = await import('../layer/archive.js')
  const data = store.dataDir(wafer)
  const fingerprint = await layerFingerprint(data)
  const blank = await hasMachineId(data)
  const diffId = await layerDiffId(data, {
    rewrite: blank ? machineIdBlanker() : undefined,
    signal: options.signal,
  })
  if (diffId !== layer.diffId) return `${wafer} has changed since it was pushed`
  if ((await layerFingerprint(data)) !== fingerprint) return `${wafer} changed while it was read`
  const why = await splitUnderLock(stacks, store, wafer, layer, fingerprint, blank)
  if (why === '') return 'appeared'
  return why ?? 'split'
}

/**
 * Why `wafer` cannot be split into `layer` (a sentence), null when it does not sit where the
 * layer does (not the same layers below: nothing to say), undefined when it can.
 */
async function unsplittable(
  store: WaferStore,
  wafer: string,
  layer: Pick<WantedLayer, 'parent'>,
): Promise<null | string | undefined> {
  if (!(await store.hasData(wafer))) return null
  if ((await store.readParent(wafer)) !== layer.parent) return null
  const meta = readMeta(store.dir(wafer), wafer)
  if (meta.layer || meta.image || meta.build) {
    return `${wafer} came from ${meta.build ? 'a build' : 'an image'}, and only wafers made by hand or seeded are split`
  }

  const data = store.dataDir(wafer)
  if (await hasMachineId(data)) {
    if (!lstatSync(path.join(data, 'etc')).isDirectory()) return `${wafer}'s etc is not a directory`
    if (lstatSync(path.join(data, 'etc', 'machine-id')).nlink !== 1) {
      return `${wafer}'s etc/machine-id has other names, which would be emptied with it`
    }
  }

  return undefined
}

/** How `wafer` or a wafer built on it is in use right now, as a reason; undefined when none is. */
async function firstUse(stacks: string, store: WaferStore, wafer: string): Promise<string | undefined> {
  const [{readInventory, descendants}, {inFlight, usesOf}] = await Promise.all([
    import('../ops/inventory.js'),
    import('../ops/in-use.js'),
  ])
  const inventory = await readInventory(store, {stacks})
  const names = [wafer, ...descendants(inventory, wafer)]
  const [use] = await usesOf(store, inventory, names)
  if (use !== undefined) return `${use.wafer}${use.wafer === wafer ? '' : `, built on ${wafer},`} ${use.how}`
  const parent = (await inFlight(store)).parents.find((name) => names.includes(name))
  if (parent !== undefined) return `a create or build is making a wafer on ${parent}`
  const {pushesPacking} = await import('./workdir.js')
  const pushes = await pushesPacking(store.root)
  if (pushes.wafers.has(wafer)) return `a push is packing ${wafer}`
  if (pushes.unknown) return 'a push is running whose wafers cannot be told'
  return undefined
}

/**
 * A regular file in `data` (a wafer's) with names outside it, as a reason: split, its inode would
 * be the layer's and a write through the other name would change the image. Undefined when none.
 */
function sharedInode(wafer: string, data: string): string | undefined {
  const names = new Map<bigint, {count: number; nlink: bigint; rel: string}>()
  const walk = (dir: string, rel: string) => {
    for (const entry of readdirSync(dir)) {
      const file = path.join(dir, entry)
      const stat = lstatSync(file, {bigint: true})
      const inner = rel === '' ? entry : `${rel}/${entry}`
      if (stat.isDirectory()) walk(file, inner)
      else if (stat.isFile() && stat.nlink > 1n) {
        const seen = names.get(stat.ino) ?? {count: 0, nlink: stat.nlink, rel: inner}
        seen.count++
        names.set(stat.ino, seen)
      }
    }
  }

  walk(data, '')
  for (const {count, nlink, rel} of names.values()) {
    if (nlink > BigInt(count)) return `${wafer}'s ${rel} has names outside it, which would change the layer with it`
  }

  return undefined
}

/**
 * Splits `wafer` into `layer` under the store lock, checking again that nothing changed since it
 * was hashed (`fingerprint`) and that nothing uses it. Undefined when split; otherwise why not,
 * or '' when the layer wafer appeared meanwhile (another pull made it).
 */
async function splitUnderLock(
  stacks: string,
  store: WaferStore,
  wafer: string,
  layer: WantedLayer,
  fingerprint: string,
  blank: boolean,
): Promise<string | undefined> {
  const [{withLock}, {finishSplits, splitLeft, splitWafer}, {layerFingerprint}] = await Promise.all([
    import('../store/lock.js'),
    import('../store/split.js'),
    import('../layer/archive.js'),
  ])
  return withLock(store.root, async () => {
    if (await store.exists(layer.name)) return ''
    await finishSplits(store)
    if (splitLeft(store, wafer)) return `${wafer} has a split left that wafers cannot finish ($WAFERS/.split-${wafer})`
    const why = await unsplittable(store, wafer, layer)
    if (why !== undefined) return why ?? `${wafer} was re-pointed meanwhile`
    const use = await firstUse(stacks, store, wafer)
    if (use !== undefined) return use
    const data = store.dataDir(wafer)
    if ((await layerFingerprint(data)) !== fingerprint) return `${wafer} changed while it was read`
    const shared = sharedInode(wafer, data)
    if (shared !== undefined) return shared
    const emptied = blank
      ? [
          {
            mtimeNs: String(lstatSync(path.join(data, 'etc', 'machine-id'), {bigint: true}).mtimeNs),
            path: 'etc/machine-id',
          },
        ]
      : []
    try {
      await splitWafer(store, {below: layer.name, emptied, parent: layer.parent, wafer}, layer.meta)
    } catch (error) {
      // Stopped midway: what its journal says is finished (or undone) now, or at the next pull.
      await finishSplits(store).catch(() => {})
      if (await store.exists(layer.name)) return ''
      throw error
    }

    return undefined
  })
}
