import {promises as fs} from 'node:fs'

import {WafersError} from './errors.js'
import {mountsUnder, readMountTable} from './mounts.js'
import {run} from './run.js'

/**
 * Removes a half-made wafer's staging directory. A seeder's program may have left file systems
 * mounted inside it (debootstrap mounts proc and sys, and in some containers binds the host's
 * /dev): those are detached first, deepest first, so the removal never reaches into them.
 */
export async function removeStaging(stage: string): Promise<void> {
  const real = await fs.realpath(stage).catch(() => stage)
  for (const {mountpoint} of mountsUnder(await readMountTable(), real)) {
    // eslint-disable-next-line no-await-in-loop
    await run('umount', ['--lazy', mountpoint]).catch(() => {})
  }

  const left = mountsUnder(await readMountTable(), real)
  if (left.length > 0) {
    throw new WafersError(
      `${stage} still has ${left.map((entry) => entry.mountpoint).join(', ')} mounted; unmount and remove it by hand.`,
    )
  }

  await fs.rm(stage, {force: true, recursive: true})
}
