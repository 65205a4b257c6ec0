import path from 'node:path'

import {WafersError} from '../errors.js'
import {run} from '../host/run.js'
import {MAX_LOWER_LAYERS} from '../store/ancestry.js'
import {linksFor} from '../store/links.js'
import {WaferStore} from '../store/store.js'

/** The kernel copies mount options into one page, terminating NUL included. */
export const MAX_OPTIONS_LENGTH = 4095

/**
 * The overlay mount options for `names` (top first), relative to the links directory:
 * `lowerdir=ID:ID...,upperdir=../TOP/data,workdir=../TOP/work`.
 */
export function overlayOptions(top: string, lowerIds: string[]): string {
  return `lowerdir=${lowerIds.join(':')},upperdir=${path.join('..', top, 'data')},workdir=${path.join('..', top, 'work')}`
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

  const options = overlayOptions(top, await linksFor(store, lowers))
  if (options.length > MAX_OPTIONS_LENGTH) {
    throw new WafersError(
      `the mount options of ${top} take ${options.length} bytes, more than the kernel's ${MAX_OPTIONS_LENGTH}.`,
    )
  }

  // The source names the links directory, so that the relative layer paths in the mount table
  // can be resolved by anyone reading it (see mounts.ts).
  await run('mount', ['-t', 'overlay', '-o', options, store.linksDir, mountpoint], {cwd: store.linksDir})
}

/**
 * Unmounts whatever is mounted at `mountpoint` (the top-most mount); lazily detaches it if asked.
 * `held`: the path reaches a directory wafers holds open (`/proc/PID/fd/N/...`) and is given to the
 * kernel as it is, never resolved to a name in the store that anyone may swap meanwhile.
 */
export async function unmount(mountpoint: string, options: {held?: boolean; lazy?: boolean} = {}): Promise<void> {
  await run('umount', [...(options.held ? ['--no-canonicalize'] : []), ...(options.lazy ? ['--lazy'] : []), mountpoint])
}
