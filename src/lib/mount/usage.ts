import {promises as fs, lstatSync, readdirSync, readlinkSync} from 'node:fs'
import path from 'node:path'

import {isErrno} from '../errors.js'
import {MountEntry, overlayLayers, readMountTable} from '../host/mounts.js'
import {isValidName} from '../store/names.js'
import {HiddenUse, hiddenUses} from '../host/processes.js'
import {WaferStore} from '../store/store.js'

/** A stack of this store's wafers that is mounted right now, by wafers, by hand or by the bash tool. */
export interface LiveStack {
  /** Wafer names of the read-only lower layers, nearest first. */
  lowers: string[]
  mountpoint: string
  /** The wafer whose data is the writable top (an overlay's upper, or a bind-mounted base). */
  top?: string
  /** How to name a stack that has no mount point here (detached, or in another namespace). */
  where?: string
}

/**
 * The stacks of `store`'s wafers in the live mount table: overlays with one of its wafers' data as
 * a layer, and bind mounts of a wafer's data. Found from the kernel's table, not from any record
 * of ours, so stacks mounted by other tools count too.
 */
export async function liveStacks(store: WaferStore, table?: MountEntry[]): Promise<LiveStack[]> {
  const entries = table ?? (await readMountTable())
  const root = await fs.realpath(store.root).catch(() => store.root)
  const waferOf = (dir: string | undefined): string | undefined => {
    if (dir === undefined || path.basename(dir) !== 'data' || path.dirname(path.dirname(dir)) !== root) return undefined
    const name = path.basename(path.dirname(dir))
    return isValidName(name) ? name : undefined
  }

  const stacks: LiveStack[] = []
  for (const entry of entries) {
    if (entry.fstype === 'overlay') {
      const layers = await overlayLayers(entry)
      const top = waferOf(layers.upper)
      const lowers = layers.lowers.map((dir) => waferOf(dir)).filter((name) => name !== undefined)
      if (top !== undefined || lowers.length > 0) stacks.push({lowers, mountpoint: entry.mountpoint, top})
      continue
    }

    // A bind mount's root is the path inside its file system, so confirm by comparing inodes.
    const name = path.basename(path.dirname(entry.root))
    if (path.basename(entry.root) !== 'data' || !isValidName(name)) continue
    if (await sameInode(entry.mountpoint, store.dataDir(name)))
      stacks.push({lowers: [], mountpoint: entry.mountpoint, top: name})
  }

  return stacks
}

async function sameInode(a: string, b: string): Promise<boolean> {
  try {
    const [first, second] = await Promise.all([fs.stat(a), fs.stat(b)])
    return first.dev === second.dev && first.ino === second.ino
  } catch (error) {
    if (isErrno(error, 'ENOENT') || isErrno(error, 'EACCES') || isErrno(error, 'ENOTDIR')) return false
    throw error
  }
}

/**
 * Why stacking `wafers` (top first) at `mountpoint` would break overlayfs's rules, given the live
 * stacks: a wafer may be the writable top of one mounted stack or a lower layer of any number of
 * them, never both, and never the top of two. Empty when it is safe.
 */
export function stackConflicts(stacks: LiveStack[], wafers: string[], mountpoint: string): string[] {
  const [top, ...below] = wafers
  const problems: string[] = []
  for (const stack of stacks) {
    if (stack.where === undefined && stack.mountpoint === mountpoint) continue
    const at = stack.where ?? `the stack at ${stack.mountpoint}`
    if (stack.lowers.includes(top)) problems.push(`${top} is a lower layer of ${at}`)
    if (stack.top === top) problems.push(`${top} is already the top of ${at}`)
    if (stack.top !== undefined && below.includes(stack.top)) {
      problems.push(`${stack.top}, below ${top}, is the writable top of ${at}`)
    }
  }

  return problems
}

/**
 * The uses of `store`'s wafers that the live mount table hides (see hiddenUses in processes.ts):
 * stacks detached with `umount --lazy` that processes still use, stacks in other mount
 * namespaces, processes in a wafer's own directory. Open files are looked at only with `openFiles`.
 */
export async function hiddenWaferUses(
  store: WaferStore,
  options: {files?: boolean; names?: string[]; openFiles?: 'affordable' | boolean; table?: MountEntry[]} = {},
): Promise<HiddenUse[]> {
  const names = options.names ?? (await store.list())
  return hiddenUses(
    {
      ancestry(name) {
        const below: string[] = []
        try {
          for (let next = store.readParentSync(name); next !== undefined && !below.includes(next);) {
            below.push(next)
            next = store.readParentSync(next)
          }
        } catch {
          // An ancestry that cannot be traced further: the wafers found so far.
        }

        return below
      },
      linkTargets() {
        const byId = new Map<string, string>()
        if (!lstatSync(store.linksDir, {throwIfNoEntry: false})?.isDirectory()) return byId
        for (const id of readdirSync(store.linksDir)) {
          try {
            const match = /^\.\.\/([^/]+)\/data$/.exec(readlinkSync(path.join(store.linksDir, id)))
            if (match && isValidName(match[1])) byId.set(id, match[1])
          } catch {
            // Not a link: not one of ours.
          }
        }

        return byId
      },
      names,
      root: store.root,
    },
    {files: options.files, openFiles: options.openFiles, table: options.table ?? (await readMountTable())},
  )
}

/**
 * What hidden use `use` makes of wafer `name`, in words that finish "wafer NAME is ...", and
 * whether it is the top (its data written, or its own files used) or a lower layer.
 */
export function hiddenUseOf(use: HiddenUse, name: string): {how: string; role: 'lower' | 'top'} {
  const top = use.kind === 'files' || use.top === name
  const how = use.kind === 'files' ? 'through' : top ? 'as the top of' : 'as a layer of'
  return {how: `still in use ${how} ${use.where}`, role: top ? 'top' : 'lower'}
}

/** The stacks among `uses` (detached, or in other namespaces), as stackConflicts takes them. */
export function hiddenStacks(uses: HiddenUse[]): LiveStack[] {
  return uses
    .filter((use) => use.kind !== 'files')
    .map((use) => ({lowers: use.wafers.slice(1), mountpoint: '', top: use.top, where: use.where}))
}
