import {existsSync, promises as fs} from 'node:fs'
import path from 'node:path'

import {isErrno} from '../errors.js'
import {type MountEntry, readMountTable} from '../host/mounts.js'
import {declaredAsLive, declaredStacks, mountedMstacks} from '../mount/mstack.js'
import {LiveStack, hiddenUseOf, hiddenWaferUses, liveStacks} from '../mount/usage.js'
import {META_FILE, readMeta} from '../store/meta.js'
import {WaferStore} from '../store/store.js'

/** The image a wafer's stack was pulled from, as its top wafer's meta.json says. */
export interface ImageOrigin {
  architecture: string
  digest: null | string
  os: string
  ref: null | string
}

/** One wafer as `list` shows it. */
export interface WaferInfo {
  /** Wafers in its stack, itself included; counted up to where the ancestry breaks. */
  depth: number
  /**
   * Uses the mount table here does not show, when looked for (`hidden`): how ("still in use as
   * the top of the stack mounted at /x in the mount namespace of 12 (sleep)", a detached stack,
   * processes in its own files) and whether as the top (or its own files) or a lower layer.
   * Absent when there are none.
   */
  elsewhere?: Array<{how: string; role: 'lower' | 'top'}>
  /** Whether rm would refuse it as in use: stacked, a lower layer, or in use elsewhere (when looked for). */
  inUse: boolean
  /** For the top wafer of a pulled image: which image. */
  image?: ImageOrigin
  /** For a wafer taken in from what importctl pull-oci made (adopt, or a pull reusing its layer): what it was. */
  imported?: {by: 'importctl'; from: string}
  /** For a wafer that holds one image layer: its OCI ChainID. */
  layer?: string
  /** Mount points of live stacks that use this wafer as a read-only lower layer. */
  lowerOf: string[]
  /** Where it is stacked as the writable top, or null when it is not. */
  mountpoint: null | string
  name: string
  /** The wafer below it, or null for a base wafer. */
  parent: null | string
  /** Why its stack cannot be traced (missing parent, loop, unreadable parent file), if so. */
  problem?: string
  /** Bytes its own data takes on disk, when asked for. */
  size?: number
  /** Whether it is the top of a live stack. */
  stacked: boolean
}

/** Every wafer of a store, with the graph of parents and children and the live stacks. */
export interface Inventory {
  /** Children of each wafer, sorted by name. */
  children: Map<string, string[]>
  stacks: LiveStack[]
  /** Wafers by name, in name order. */
  wafers: Map<string, WaferInfo>
}

/**
 * Reads every wafer of `store`: one readdir, one parent file each and one pass over the mount
 * table, so that it stays fast for tens of thousands of wafers. Never throws for a broken
 * wafer: its `problem` says what is wrong.
 */
export async function readInventory(
  store: WaferStore,
  options: {
    /**
     * Also look for the uses the mount table hides (stacks in other mount namespaces, detached
     * stacks, processes in a wafer's files) in one pass over /proc for all wafers; open files
     * only when the host has few enough to stat quickly.
     */
    hidden?: boolean
    /** $STACKS, whose `.mstack` directories count as stacks (systemd mounts them when it likes). */
    stacks?: string
    table?: MountEntry[]
  } = {},
): Promise<Inventory> {
  const names = await store.list()
  const parents = names.map((name) => readParentOrProblem(store, name))
  const wafers = new Map<string, WaferInfo>()
  for (const [i, name] of names.entries()) {
    const {parent, problem} = parents[i]
    wafers.set(name, {
      name,
      parent: parent ?? null,
      depth: 0,
      stacked: false,
      mountpoint: null,
      lowerOf: [],
      inUse: false,
      ...(problem ? {problem} : {}),
      ...originOf(store, name),
    })
  }

  const children = new Map<string, string[]>()
  for (const wafer of wafers.values()) {
    if (wafer.parent === null) continue
    const siblings = children.get(wafer.parent)
    if (siblings) siblings.push(wafer.name)
    else children.set(wafer.parent, [wafer.name])
  }

  for (const wafer of wafers.values()) computeDepth(wafers, wafer)

  const table = options.table ?? (await readMountTable())
  const declared = options.stacks === undefined ? [] : declaredStacks(store, options.stacks)
  const stacks = [...(await liveStacks(store, table)), ...mountedMstacks(declared, table), ...declaredAsLive(declared)]
  for (const stack of stacks) {
    const top = stack.top === undefined ? undefined : wafers.get(stack.top)
    if (top && !top.stacked) {
      top.stacked = true
      top.mountpoint = stack.mountpoint
    }

    for (const lower of stack.lowers) {
      const wafer = wafers.get(lower)
      if (wafer && !wafer.lowerOf.includes(stack.mountpoint)) wafer.lowerOf.push(stack.mountpoint)
    }
  }

  if (options.hidden) {
    for (const use of await hiddenWaferUses(store, {names, openFiles: 'affordable', table})) {
      // A live stack of this namespace, found again in its table: already counted above.
      if (use.hereAt !== undefined && stacks.some((stack) => stack.mountpoint === use.hereAt)) continue
      for (const name of use.wafers) {
        const wafer = wafers.get(name)
        if (wafer === undefined) continue
        const {how, role} = hiddenUseOf(use, name)
        if (role === 'top' && use.kind !== 'files') wafer.stacked = true
        wafer.elsewhere = [...(wafer.elsewhere ?? []), {how, role}]
      }
    }
  }

  for (const wafer of wafers.values()) {
    wafer.inUse = wafer.stacked || wafer.lowerOf.length > 0 || wafer.elsewhere !== undefined
  }

  return {children, stacks, wafers}
}

/** The wafers no other wafer has as its parent: the tops of every possible stack, in name order. */
export function childless(inventory: Inventory): string[] {
  return [...inventory.wafers.keys()].filter((name) => !inventory.children.has(name))
}

/** The wafers built on `name` (children, grandchildren, ...), deepest first, never `name` itself. */
export function descendants(inventory: Inventory, name: string): string[] {
  const found: Array<{level: number; name: string}> = []
  const seen = new Set([name])
  let level = [name]
  for (let depth = 1; level.length > 0; depth++) {
    const next: string[] = []
    for (const parent of level) {
      for (const child of inventory.children.get(parent) ?? []) {
        if (seen.has(child)) continue
        seen.add(child)
        next.push(child)
        found.push({level: depth, name: child})
      }
    }

    level = next
  }

  return found.sort((a, b) => b.level - a.level || compare(a.name, b.name)).map((entry) => entry.name)
}

/**
 * Bytes `dir` takes on disk (allocated blocks, each hard-linked file once), like `du -s -B1`.
 * It reads every file, so only asked for.
 */
export async function diskUsage(dir: string): Promise<number> {
  const seen = new Set<string>()
  let total = 0
  async function walk(current: string): Promise<void> {
    let entries
    try {
      entries = await fs.readdir(current, {withFileTypes: true})
    } catch (error) {
      if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR') || isErrno(error, 'EACCES')) return
      throw error
    }

    await mapLimit(entries, 32, async (entry) => {
      const file = path.join(current, entry.name)
      const stat = await fs.lstat(file).catch(() => undefined)
      if (!stat) return
      if (stat.nlink > 1 && !stat.isDirectory()) {
        const key = `${stat.dev}:${stat.ino}`
        if (seen.has(key)) return
        seen.add(key)
      }

      total += stat.blocks * 512
      if (stat.isDirectory()) await walk(file)
    })
  }

  const root = await fs.lstat(dir).catch(() => undefined)
  if (!root) return 0
  total += root.blocks * 512
  if (root.isDirectory()) await walk(dir)
  return total
}

/** Byte-wise string order, the same in every locale. */
export function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

/** Runs `work` on every item with at most `limit` at a time, keeping the order of results. */
export async function mapLimit<T, R>(items: T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = Array.from({length: items.length})
  let next = 0
  async function worker(): Promise<void> {
    while (next < items.length) {
      const i = next++
      results[i] = await work(items[i])
    }
  }

  await Promise.all(Array.from({length: Math.min(limit, items.length)}, () => worker()))
  return results
}

/**
 * Reads a parent file synchronously: for thousands of tiny files that is about ten times faster
 * than fs.promises, whose every open, read and close is a trip through libuv's thread pool.
 */
function readParentOrProblem(store: WaferStore, name: string): {parent?: string; problem?: string} {
  try {
    const parent = store.readParentSync(name)
    return parent === undefined ? {} : {parent}
  } catch (error) {
    return {problem: (error as Error).message.replace(/\.$/, '')}
  }
}

/** What a wafer's meta.json says it came from (an image layer, an image's top); nothing when it has none or it cannot be read. */
function originOf(store: WaferStore, name: string): Pick<WaferInfo, 'image' | 'imported' | 'layer'> {
  // Most wafers have no meta.json: a check that cannot throw is far cheaper than a failed open's
  // exception, ten thousand times over. readMeta then opens it without following a symlink.
  if (!existsSync(path.join(store.dir(name), META_FILE))) return {}
  try {
    const meta = readMeta(store.dir(name), name)
    const origin: Pick<WaferInfo, 'image' | 'imported' | 'layer'> = {}
    if (typeof meta.layer?.chainId === 'string') origin.layer = meta.layer.chainId
    if (meta.imported?.by === 'importctl' && typeof meta.imported.from === 'string') {
      origin.imported = {by: 'importctl', from: meta.imported.from}
    }

    if (meta.image) {
      const {architecture, digest, os, ref} = meta.image
      origin.image = {architecture: String(architecture), digest: digest ?? null, os: String(os), ref: ref ?? null}
    }

    return origin
  } catch {
    return {}
  }
}

/** A short note on where a wafer came from, for tables and trees: `image layer`, `from REF`. */
export function originNote(wafer: Pick<WaferInfo, 'image' | 'imported' | 'layer'>): string | undefined {
  // A layer's importctl directory is named by a 64-digit digest: --json says which.
  if (wafer.image) return `from ${wafer.image.ref ?? (wafer.imported ? `importctl's ${path.basename(wafer.imported.from)}` : 'an image')}`
  if (wafer.layer) return wafer.imported ? 'image layer, from importctl' : 'image layer'
  return undefined
}

/** Fills in the depth (and any problem) of `start` and of every wafer on its way down, without recursion. */
function computeDepth(wafers: Map<string, WaferInfo>, start: WaferInfo): void {
  if (start.depth > 0) return
  const chain: WaferInfo[] = []
  const onChain = new Set<string>()
  let current: WaferInfo | undefined = start
  let below: WaferInfo | undefined
  let problem: string | undefined
  while (current) {
    if (current.depth > 0) {
      below = current
      break
    }

    if (onChain.has(current.name)) {
      problem = `its ancestry loops through ${current.name}`
      break
    }

    chain.push(current)
    onChain.add(current.name)
    if (current.problem || current.parent === null) break
    const parent = wafers.get(current.parent)
    if (!parent) {
      problem = `its parent ${current.parent} does not exist`
      break
    }

    current = parent
  }

  const last = chain.at(-1)
  if (last && problem && !last.problem) last.problem = problem
  for (let i = chain.length - 1; i >= 0; i--) {
    const wafer = chain[i]
    const next = i === chain.length - 1 ? below : chain[i + 1]
    wafer.depth = (next?.depth ?? 0) + 1
    if (next?.problem && !wafer.problem) wafer.problem = `its ancestry is broken below ${next.name}`
  }
}

/** One wafer of the ancestry forest, as `tree --json` prints it. */
export interface WaferNode {
  name: string
  stacked: boolean
  mountpoint: null | string
  lowerOf: string[]
  elsewhere?: Array<{how: string; role: 'lower' | 'top'}>
  problem?: string
  layer?: string
  image?: ImageOrigin
  children: WaferNode[]
}

/**
 * The ancestry forest: base wafers at the roots, children sorted by name. Wafers whose parent is
 * missing or whose ancestry loops are roots too, so every wafer shows up once. With `name`, only
 * the subtree under it.
 */
export function ancestryForest(inventory: Inventory, name?: string): WaferNode[] {
  const nodes = new Map<string, WaferNode>()
  for (const wafer of inventory.wafers.values()) {
    const {elsewhere, image, layer, lowerOf, mountpoint, problem, stacked} = wafer
    nodes.set(wafer.name, {
      name: wafer.name,
      stacked,
      mountpoint,
      lowerOf,
      ...(elsewhere ? {elsewhere} : {}),
      ...(problem ? {problem} : {}),
      ...(layer ? {layer} : {}),
      ...(image ? {image} : {}),
      children: [],
    })
  }

  const placed = new Set<string>()
  const attach = (root: string) => {
    const queue = [root]
    placed.add(root)
    while (queue.length > 0) {
      const parent = queue.shift()!
      for (const child of inventory.children.get(parent) ?? []) {
        if (placed.has(child)) continue
        placed.add(child)
        nodes.get(parent)!.children.push(nodes.get(child)!)
        queue.push(child)
      }
    }
  }

  if (name !== undefined) {
    attach(name)
    return [nodes.get(name)!]
  }

  const roots: WaferNode[] = []
  for (const wafer of inventory.wafers.values()) {
    if (wafer.parent !== null && inventory.wafers.has(wafer.parent)) continue
    attach(wafer.name)
    roots.push(nodes.get(wafer.name)!)
  }

  // What no base reaches is on a loop: show it from its first wafer by name.
  for (const wafer of inventory.wafers.values()) {
    if (placed.has(wafer.name)) continue
    attach(wafer.name)
    roots.push(nodes.get(wafer.name)!)
  }

  return roots
}
