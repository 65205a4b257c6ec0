import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../../errors.js'
import type {Seeder} from '../../hooks.js'
import {escapeOverlayAttributes} from '../../layer/escape.js'

/**
 * Copies a directory tree into the new wafer with `cp -a`: owners, modes, timestamps, symlinks,
 * hard links (within the tree), device nodes and extended attributes are kept, overlay attributes
 * (trusted.overlay.*, user.overlay.*) escaped so that no mount of the wafer acts on them.
 */
export const dirSeeder: Seeder = {
  name: 'dir',
  async seed(ctx) {
    if (ctx.args.length !== 1)
      throw new WafersError(`the dir seeder takes one argument, the directory to copy; got ${ctx.args.length}.`)
    const source = path.resolve(ctx.args[0])
    const stat = await fs.stat(source).catch(() => undefined)
    if (!stat?.isDirectory()) throw new WafersError(`${source} is not a directory.`)
    ctx.report(`copying ${source}`)
    // "SOURCE/." (not path.join, which drops the dot) copies the contents, and the directory's
    // own owner, mode and xattrs onto data.
    await ctx.run('cp', ['-a', '--', `${source}/.`, ctx.dataDir], {package: 'coreutils'})
    const escaped = await escapeOverlayAttributes(ctx.dataDir)
    if (escaped > 0) ctx.report(`kept ${escaped} overlay attributes escaped, so no mount of the wafer acts on them`)
  },
  summary: 'Copy a directory tree, keeping owners, modes, links, hard links and xattrs.',
  usage: 'DIRECTORY',
}
