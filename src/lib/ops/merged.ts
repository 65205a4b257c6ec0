import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {run} from '../host/run.js'
import {mountOverlay} from '../mount/overlay.js'
import {linksFor} from '../store/links.js'
import {MAX_LOWER_LAYERS} from '../store/ancestry.js'
import {WaferStore} from '../store/store.js'
import {usesOf} from './in-use.js'
import {Inventory} from './inventory.js'

/**
 * Runs `fn` on the merged view of `names` (a wafer's stack, top first) as a container sees it:
 * every layer mounted as a read-only overlay lower layer at `scratch/merged`, so that whiteouts
 * and opaque directories have done their work and no trusted.overlay.* attribute shows. `scratch`
 * is a directory only wafers may write to (a stage): the mount is made there, never in $STACKS,
 * and is gone when `fn` ends, however it ends. While it is up, the mount table shows the layers
 * as a live stack's lower layers, so rm and mv refuse them.
 */
export async function withMergedView<T>(
  store: WaferStore,
  names: string[],
  scratch: string,
  fn: (root: string) => Promise<T>,
): Promise<T> {
  const view = await mountMergedView(store, names, scratch)
  try {
    return await fn(view.root)
  } finally {
    await view.unmount()
  }
}

/** The merged view of withMergedView, mounted until `unmount()`, for a caller that must release a lock in between. */
export async function mountMergedView(
  store: WaferStore,
  names: string[],
  scratch: string,
): Promise<{root: string; unmount(): Promise<void>}> {
  if (names.length > MAX_LOWER_LAYERS) {
    throw new WafersError(
      `overlayfs mounts at most ${MAX_LOWER_LAYERS} read-only layers; ${names[0]} has ${names.length}.`,
    )
  }

  const merged = path.join(scratch, 'merged')
  await fs.mkdir(merged)
  // A lower-only overlay takes two layers at least: a base wafer alone goes on an empty one.
  const empty = path.join(scratch, 'empty')
  if (names.length === 1) await fs.mkdir(empty)
  const tidy = async () => {
    await fs.rmdir(merged).catch(() => {})
    if (names.length === 1) await fs.rmdir(empty).catch(() => {})
  }

  try {
    const lower = [...(await linksFor(store, names)), ...(names.length === 1 ? [empty] : [])]
    await mountOverlay(store, {lower}, merged, {held: true, what: `${names[0]}'s stack`})
  } catch (error) {
    await tidy()
    throw error
  }

  return {
    root: merged,
    async unmount() {
      await run('umount', ['--no-canonicalize', merged]).catch(async () =>
        run('umount', ['--no-canonicalize', '--lazy', merged]).catch(() => {}),
      )
      await tidy()
    },
  }
}

/**
 * Refuses, in one sentence, a stack whose view may change while it is read: one of `names` is the
 * writable top of a live stack (in any mount namespace) or has its files open. Read-only lower
 * layers of other stacks do not change, and are fine.
 */
export async function refuseWritable(
  store: WaferStore,
  inventory: Inventory,
  names: string[],
  doing: string,
): Promise<void> {
  const [use] = (await usesOf(store, inventory, names)).filter((candidate) => candidate.role === 'top')
  if (use === undefined) return
  throw new WafersError(
    `wafer ${use.wafer} ${use.how}, where its files may change while they are read; unstack it first, wafers ${doing} only a stack nothing writes to. Nothing was changed.`,
    {suggestions: [`wafers unstack ${use.wafer}`]},
  )
}
