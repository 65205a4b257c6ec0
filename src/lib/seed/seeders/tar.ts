import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../../errors.js'
import type {Seeder} from '../../hooks.js'

/**
 * Unpacks a root file system tarball (plain, gzip, bzip2, xz or zstd) into the new wafer through
 * the one tar reader and unpacker (layer/unpack.ts), keeping numeric owners, modes, links, hard
 * links, devices and extended attributes (file capabilities too; overlay's own attributes escaped).
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
    const {unpackTarball} = await import('../../layer/unpack.js')
    // The user named this file: a symlink to it is theirs to follow.
    await unpackTarball(await fs.realpath(file), ctx.dataDir, {name: file})
  },
  summary: 'Unpack a root file system tarball, keeping numeric owners, modes, links and xattrs.',
  usage: 'TARBALL',
}
