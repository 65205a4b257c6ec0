import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {loadXattr} from '../host/xattr.js'
import {isOpaqueDir, lookup} from '../layer/lookup.js'
import {isWhiteout} from '../layer/whiteouts.js'
import {traceAncestry} from '../store/ancestry.js'
import {compare, mapLimit} from './inventory.js'
import {WaferStore} from '../store/store.js'

/** How a path differs from the wafers below: as `docker diff`'s A, C and D. */
export type Change = 'added' | 'changed' | 'deleted'

/** One changed path, absolute inside the stack. */
export interface DiffEntry {
  path: string
  change: Change
}

/** The letter `docker diff` prints for each kind of change. */
export const CHANGE_LETTERS: Record<Change, string> = {added: 'A', changed: 'C', deleted: 'D'}

/**
 * What wafer `name` changes relative to the stack of wafers below it, read from its data the way
 * overlayfs reads an upper layer: a whiteout (character device 0/0) deletes, an opaque directory
 * (xattr trusted.overlay.opaque or user.overlay.opaque = "y") hides everything below it, anything
 * else adds or changes.
 * A directory that holds changes and exists below is itself "changed", as in `docker diff`.
 * Reads only the wafer's files and the paths they name below, so works stacked or not.
 */
export async function diffWafer(store: WaferStore, name: string): Promise<DiffEntry[]> {
  if (process.getuid?.() !== 0) {
    throw new WafersError(
      'wafers diff must run as root to read the trusted.overlay attributes of opaque directories.',
      {
        suggestions: ['Run it with sudo.'],
      },
    )
  }

  if (!(await store.hasData(name))) throw new WafersError(`wafer ${name} not found in ${store.root}.`)
  const chain = await traceAncestry(store, name)
  await loadXattr()
  const entries: DiffEntry[] = []

  async function walk(upper: string, rel: string, lowers: string[]): Promise<void> {
    const names = await fs.readdir(upper)
    await mapLimit(names, 16, async (entry) => {
      const file = path.join(upper, entry)
      const inStack = `${rel}/${entry}`
      const stat = await fs.lstat(file)
      const below = lookup(lowers, entry)
      if (isWhiteout(stat)) {
        if (below.kind !== 'none') entries.push({path: inStack, change: 'deleted'})
        return
      }

      entries.push({path: inStack, change: below.kind === 'none' ? 'added' : 'changed'})
      if (!stat.isDirectory()) return
      const dirsBelow = below.kind === 'dir' ? below.dirs : []
      if (dirsBelow.length > 0 && isOpaqueDir(file)) {
        const here = new Set(await fs.readdir(file))
        for (const hidden of await visibleNames(dirsBelow)) {
          if (!here.has(hidden)) entries.push({path: `${inStack}/${hidden}`, change: 'deleted'})
        }
      }

      await walk(file, inStack, dirsBelow)
    })
  }

  await walk(
    store.dataDir(name),
    '',
    chain.slice(1).map((wafer) => store.dataDir(wafer)),
  )
  // Sort as paths: a directory comes right before what is in it ("/a", "/a/b", "/a-b").
  const key = (entry: DiffEntry) => entry.path.replaceAll('/', '\0')
  return entries.sort((a, b) => compare(key(a), key(b)))
}

/** The names the merged directories `dirs` (nearest first) show: whiteouts hide the ones below. */
async function visibleNames(dirs: string[]): Promise<string[]> {
  const seen = new Map<string, boolean>()
  for (const dir of dirs) {
    for (const entry of await fs.readdir(dir, {withFileTypes: true})) {
      if (seen.has(entry.name)) continue
      const whiteout = entry.isCharacterDevice() && isWhiteout(await fs.lstat(path.join(dir, entry.name)))
      seen.set(entry.name, !whiteout)
    }
  }

  return [...seen].filter(([, visible]) => visible).map(([entry]) => entry)
}
