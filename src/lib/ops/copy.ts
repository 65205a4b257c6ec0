import {closeSync, constants, openSync} from 'node:fs'

import {WafersError} from '../errors.js'
import {run} from '../host/run.js'
import {checkRoot} from '../host/system.js'
import {traceAncestry} from '../store/ancestry.js'
import {withLock} from '../store/lock.js'
import {readMeta} from '../store/meta.js'
import {checkName} from '../store/names.js'
import {heldPath} from '../store/staging.js'
import {Locations, WaferStore} from '../store/store.js'
import {usesOf} from './in-use.js'
import {readInventory} from './inventory.js'

/** What `cp` made, as `--json` prints it. */
export interface CopyResult {
  /** The new wafer. */
  name: string
  /** The parent both share, or null for base wafers. */
  parent: null | string
  source: string
}

/**
 * Copies the whole tree at `from` onto the directory `to` (its contents and the attributes of
 * `from` itself): owners, modes, timestamps, xattrs (trusted.overlay.* included, as root), hard
 * links, devices and overlay whiteouts, sharing blocks where the file system can (reflink).
 */
export async function copyTree(from: string, to: string): Promise<void> {
  await run('cp', ['-a', '--reflink=auto', '--no-target-directory', '--', `${from}/.`, to])
}

/**
 * Makes wafer `dst` a sibling of `src`: the same parent, a copy of its data, and its image config
 * when it has one (so that it stacks, runs and pushes the same). Refuses a `dst` that exists and an
 * `src` that is the writable top of a stack, or whose files processes use: its data may change
 * while it is copied. Runs under the store lock, so that no `wafers stack` puts `src` up meanwhile.
 */
export async function copyWafer(locations: Locations, src: string, dst: string): Promise<CopyResult> {
  checkName(src)
  checkName(dst)
  checkRoot()
  const store = new WaferStore(locations.wafers)
  return withLock(store.root, async () => {
    const inventory = await readInventory(store, {stacks: locations.stacks})
    const source = inventory.wafers.get(src)
    if (source === undefined || !(await store.hasData(src))) {
      throw new WafersError(`wafer ${src} not found in ${store.root}.`)
    }

    if (await store.exists(dst))
      throw new WafersError(`wafer ${dst} already exists in ${store.root}; nothing was copied.`)
    await traceAncestry(store, src)
    // A read-only lower layer of a stack does not change; a writable top may, at any moment.
    const writing = (await usesOf(store, inventory, [src])).filter((use) => use.role === 'top')
    if (writing.length > 0) {
      throw new WafersError(
        `wafer ${src} ${writing[0].how}, where its files may change while they are copied; unstack it first. Nothing was copied.`,
        {suggestions: [`wafers unstack ${src}`]},
      )
    }

    const image = readMeta(store.dir(src), src).image
    // The source is read through a descriptor opened without following a link, never by its name.
    const fd = openSync(store.dataDir(src), constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
    try {
      await store.create(dst, source.parent ?? undefined, {
        fill: (data) => copyTree(heldPath(fd), data),
        ...(image ? {meta: {image}} : {}),
      })
    } finally {
      closeSync(fd)
    }

    return {name: dst, parent: source.parent, source: src}
  })
}
