import {createHash, randomBytes} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import type {PruneCandidate, SeedContext} from 'wafers'

/** How root file systems are packed (GNU tar): numeric owners, modes, links, xattrs, ACLs. */
const TAR_OPTIONS = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls']

/**
 * A finished debootstrap, packed as a tarball and named after what made it: the request (suite,
 * mirror, options, architecture) and the suite's Release file at the time. The same request
 * against an unchanged mirror gives the same packages, so it can be unpacked instead of
 * installed again; a new Release (an updated mirror) makes a new entry.
 */
export class RootfsCache {
  constructor(readonly dir: string) {}

  /** The tarball for a request and Release text, and the prefix all its versions share. */
  entry(request: unknown, release: string): {file: string; prefix: string} {
    const digest = (text: string) => createHash('sha256').update(text).digest('hex').slice(0, 16)
    const prefix = `rootfs-${digest(JSON.stringify({arch: process.arch, request}))}-`
    return {file: path.join(this.dir, `${prefix}${digest(release)}.tar`), prefix}
  }

  /**
   * Unpacks a cached root file system into the new wafer; false when there is none. Through
   * wafers' one tar reader (ctx.unpack), as a pulled layer is: what lands is what was checked.
   */
  async restore(ctx: SeedContext, file: string): Promise<boolean> {
    if (
      !(await fs.access(file).then(
        () => true,
        () => false,
      ))
    )
      return false
    ctx.report(`unpacking the root file system cached in ${file}`)
    await ctx.unpack(file)
    return true
  }

  /** Packs `source` as the entry `file`, atomically, and drops older versions of the same request. */
  async store(ctx: SeedContext, entry: {file: string; prefix: string}, source: string): Promise<void> {
    await fs.mkdir(this.dir, {recursive: true})
    const partial = `${entry.file}.${randomBytes(4).toString('hex')}.partial`
    ctx.report(`caching the root file system in ${entry.file}`)
    try {
      await ctx.run('tar', ['--create', ...TAR_OPTIONS, '--file', partial, '--directory', source, '.'], {
        package: 'tar',
      })
      await fs.rename(partial, entry.file)
    } catch (error) {
      await fs.rm(partial, {force: true})
      throw error
    }

    for (const name of await fs.readdir(this.dir)) {
      const file = path.join(this.dir, name)
      if (name.startsWith(entry.prefix) && name.endsWith('.tar') && file !== entry.file)
        await fs.rm(file, {force: true})
    }
  }

  /**
   * The cached root file systems, for `wafers prune`: finished tarballs only (a seed writes a
   * `.partial` and renames it when done), each deleted by its name. A seed unpacking one meanwhile
   * keeps reading the file it opened, so none is ever in the way of a running seed.
   */
  async prunable(): Promise<PruneCandidate[]> {
    const entries = await fs.readdir(this.dir).catch(() => [] as string[])
    const candidates: PruneCandidate[] = []
    for (const name of entries.sort()) {
      if (!name.endsWith('.tar')) continue
      const file = path.join(this.dir, name)
      const stat = await fs.lstat(file).catch(() => undefined)
      if (!stat?.isFile()) continue
      candidates.push({
        name: `debootstrap root file system ${name}`,
        path: file,
        remove: () => fs.unlink(file),
        size: stat.blocks * 512,
      })
    }

    return candidates
  }
}
