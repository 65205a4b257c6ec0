import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../../errors.js'
import type {Seeder} from '../../hooks.js'

/** The GNU tar options that restore a root file system exactly as it was packed. */
export const TAR_EXTRACT_OPTIONS = [
  '--extract',
  '--numeric-owner',
  '--same-owner',
  '--same-permissions',
  '--xattrs',
  '--xattrs-include=*',
  '--acls',
]

/**
 * Unpacks a root file system tarball (compression detected by tar) into the new wafer, keeping
 * numeric owners, modes, links, hard links, ACLs and extended attributes (file capabilities too).
 */
export const tarSeeder: Seeder = {
  name: 'tar',
  async seed(ctx) {
    if (ctx.args.length !== 1)
      throw new WafersError(`the tar seeder takes one argument, the tarball to unpack; got ${ctx.args.length}.`)
    const file = path.resolve(ctx.args[0])
    const stat = await fs.stat(file).catch(() => undefined)
    if (!stat?.isFile()) throw new WafersError(`${file} is not a file.`)
    ctx.report(`unpacking ${file}`)
    await ctx.run('tar', [...TAR_EXTRACT_OPTIONS, '--file', file, '--directory', ctx.dataDir], {package: 'tar'})
  },
  summary: 'Unpack a root file system tarball, keeping numeric owners, modes, links and xattrs.',
  usage: 'TARBALL',
}
