import path from 'node:path'
import type {PruneHook} from 'wafers'

import {DEFAULT_CACHE_DIR} from './debootstrap.js'
import {RootfsCache} from './rootfs-cache.js'

/**
 * Offers `wafers prune` the root file systems debootstrap seeds cached in the default cache
 * directory. The .deb files debootstrap keeps beside them stay: a debootstrap running now may
 * be about to install one, and nothing here can tell.
 */
const hook: PruneHook = async function () {
  return new RootfsCache(path.join(DEFAULT_CACHE_DIR, 'rootfs')).prunable()
}

export default hook
