/**
 * Building and running an overlay mount: its options (one page at most), the one mount(8) call
 * that stack and the builder's steps share, and unmounting.
 */
import path from 'node:path'

import {WafersError} from '../errors.js'
import {run} from '../host/run.js'
import {MAX_LOWER_LAYERS} from '../store/ancestry.js'
import {linksFor} from '../store/links.js'
import {WaferStore} from '../store/store.js'

/** The kernel copies mount options into one page, terminating NUL included. */
export const MAX_OPTIONS_LENGTH = 4095

/** The layers of an overlay mount: paths relative to the store's links directory (its short links), or absolute. */
export interface OverlayMount {
  /** The lower layers, nearest first. */
  lower: string[]
  /** The writable upper layer and overlayfs's work directory beside it; without, the mount is read-only. */
  upper?: {data: string; work: string}
}

/** The options of an overlay mount of `layers`: `lowerdir=A:B,upperdir=U,workdir=W`, or `ro,lowerdir=A:B`. */
export function overlayMountOptions(layers: OverlayMount): string {
  const lowerdir = `lowerdir=${layers.lower.join(':')}`
  return layers.upper ? `${lowerdir},upperdir=${layers.upper.data},workdir=${layers.upper.work}` : `ro,${lowerdir}`
}

/**
 * The layers of wafer `top`'s stack on the short links `lowerIds` (nearest first), relative to the
 * links directory: `../TOP/data` is the upper, `../TOP/work` overlayfs's work directory.
 */
export function stackLayers(top: string, lowerIds: string[]): OverlayMount {
  return {lower: lowerIds, upper: {data: path.join('..', top, 'data'), work: path.join('..', top, 'work')}}
}

/**
 * Mounts an overlay of `layers` at `mountpoint`, refusing options longer than the page the kernel
 * takes them in (naming `what`). The mount's source and working directory is the store's links
 * directory, so that relative layer paths are its short links and the mount table shows where
 * they lead (see mounts.ts). `held`: the paths reach directories wafers holds open
 * (`/proc/PID/fd/N/...`) and go to the kernel as they are, never resolved by mount(8).
 */
export async function mountOverlay(
  store: WaferStore,
  layers: OverlayMount,
  mountpoint: string,
  options: {held?: boolean; what: string},
): Promise<void> {
  const text = overlayMountOptions(layers)
  if (text.length > MAX_OPTIONS_LENGTH) {
    throw new WafersError(
      `the mount options of ${options.what} take ${text.length} bytes, more than the kernel's ${MAX_OPTIONS_LENGTH}.`,
    )
  }

  await run(
    'mount',
    [...(options.held ? ['--no-canonicalize'] : []), '-t', 'overlay', '-o', text, store.linksDir, mountpoint],
    {cwd: store.linksDir},
  )
}

/**
 * Mounts the stack of `names` (wafer names, top first) at `mountpoint`: the top wafer's `data` is
 * the writable upper layer, the others are lower layers, nearest first. A wafer alone is
 * bind-mounted, so writes go straight into its `data`.
 */
export async function mountStack(store: WaferStore, names: string[], mountpoint: string): Promise<void> {
  const [top, ...lowers] = names
  if (lowers.length === 0) {
    await run('mount', ['--bind', store.dataDir(top), mountpoint])
    return
  }

  if (lowers.length > MAX_LOWER_LAYERS) {
    throw new WafersError(`overlayfs mounts at most ${MAX_LOWER_LAYERS} lower layers; ${top} has ${lowers.length}.`)
  }

  await mountOverlay(store, stackLayers(top, await linksFor(store, lowers)), mountpoint, {what: top})
}

/**
 * Unmounts whatever is mounted at `mountpoint` (the top-most mount); lazily detaches it if asked.
 * `held`: the path reaches a directory wafers holds open (`/proc/PID/fd/N/...`) and is given to the
 * kernel as it is, never resolved to a name in the store that anyone may swap meanwhile.
 */
export async function unmount(mountpoint: string, options: {held?: boolean; lazy?: boolean} = {}): Promise<void> {
  await run('umount', [...(options.held ? ['--no-canonicalize'] : []), ...(options.lazy ? ['--lazy'] : []), mountpoint])
}
