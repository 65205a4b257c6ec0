import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {readStoreFile, writeFileAtomic} from '../host/files.js'
import {checkDigest} from './image.js'
import type {PruneCandidate} from '../hooks.js'
import {isValidName} from '../store/names.js'
import type {CacheSource} from '../ops/prune.js'
import {ociDir, workDirsHeld} from './workdir.js'

/** A packed layer of one wafer, as push made it: valid only while the wafer's fingerprint is the same. */
export interface CachedLayer {
  diffId: string
  /** CACHE_FORMAT when the blob was stored; another value is never reused. */
  format?: number
  digest: string
  fingerprint: string
  mediaType: string
  size: number
}

/** Bumped when push writes other bytes for the same wafer (2: machine ids emptied), so older blobs are not reused. */
const CACHE_FORMAT = 2

/**
 * Packed layers of wafers, so that pushing an unchanged wafer again packs nothing:
 * `$WAFERS/.oci/layers/NAME.json` says which blob of `$WAFERS/.oci/blobs/sha256` holds wafer
 * NAME's layer, for which fingerprint. Anyone may write to $WAFERS, so an entry is used only when
 * its fingerprint equals the wafer's now and its blob is a regular file of the right size (skopeo
 * checks the blob's digest as it reads it).
 */
export class LayerCache {
  constructor(readonly wafers: string) {}

  get blobs(): string {
    return path.join(ociDir(this.wafers), 'blobs', 'sha256')
  }

  /** The blob file of `digest` in the cache. */
  blob(digest: string): string {
    return path.join(this.blobs, checkDigest(digest, 'a cached layer').slice(7))
  }

  /** Makes the cache's directories, refusing any that is a symlink or not a directory. */
  async ensure(): Promise<void> {
    for (const dir of [ociDir(this.wafers), path.dirname(this.blobs), this.blobs, this.entries]) {
      await fs.mkdir(dir, {mode: 0o700}).catch((error) => {
        if (!isErrno(error, 'EEXIST')) throw error
      })
      const stat = await fs.lstat(dir)
      if (!stat.isDirectory()) throw new WafersError(`${dir} is not a directory; remove it.`)
    }
  }

  get entries(): string {
    return path.join(ociDir(this.wafers), 'layers')
  }

  /** The cached layer of wafer `name` for `fingerprint`, or undefined when there is none that fits. */
  async lookup(name: string, fingerprint: string): Promise<CachedLayer | undefined> {
    let entry: CachedLayer
    try {
      const text = readStoreFile(path.join(this.entries, `${name}.json`), `the cached layer of wafer ${name}`)
      if (text === undefined) return undefined
      entry = JSON.parse(text) as CachedLayer
      if (entry.fingerprint !== fingerprint || entry.format !== CACHE_FORMAT) return undefined
      checkDigest(entry.digest, 'a cached layer')
      checkDigest(entry.diffId, 'a cached layer')
    } catch {
      return undefined
    }

    const stat = await fs.lstat(this.blob(entry.digest)).catch(() => undefined)
    return stat?.isFile() && stat.size === entry.size ? entry : undefined
  }

  /**
   * The wafers whose last push packed them into the layer of diffID `diffId`, by name: what a
   * pull may take that layer from (oci/dedupe.ts), once it has checked that the wafer still packs
   * to it. Only a hint: an entry says nothing about the wafer now.
   */
  async packedAs(diffId: string): Promise<string[]> {
    const names = await fs.readdir(this.entries).catch(() => [] as string[])
    const found: string[] = []
    for (const entry of names.filter((file) => file.endsWith('.json')).sort()) {
      const name = entry.slice(0, -'.json'.length)
      if (!isValidName(name)) continue
      try {
        const text = readStoreFile(path.join(this.entries, entry), `the cached layer of wafer ${name}`)
        const cached = text === undefined ? undefined : (JSON.parse(text) as CachedLayer)
        if (cached?.diffId === diffId && cached.format === CACHE_FORMAT) found.push(name)
      } catch {
        // An entry that cannot be read points at nothing.
      }
    }

    return found
  }

  /**
   * Records that wafer `name` packs as `from` did (a split moved `from`'s files into it), for
   * its new fingerprint, when `from` has an entry of `diffId`: its next push then packs nothing.
   */
  async copyEntry(from: string, name: string, diffId: string, fingerprint: string): Promise<void> {
    try {
      const text = readStoreFile(path.join(this.entries, `${from}.json`), `the cached layer of wafer ${from}`)
      if (text === undefined) return
      const entry = JSON.parse(text) as CachedLayer
      if (entry.diffId !== diffId || entry.format !== CACHE_FORMAT) return
      checkDigest(entry.digest, 'a cached layer')
      writeFileAtomic(
        path.join(this.entries, `${name}.json`),
        `${JSON.stringify({...entry, fingerprint, format: CACHE_FORMAT})}\n`,
        0o600,
      )
    } catch {
      // The cache is only a cache: the next push packs the wafer again.
    }
  }

  /** Records `entry` as wafer `name`'s layer, its blob moved in from `file`. */
  async store(name: string, entry: CachedLayer, file: string): Promise<void> {
    await fs.rename(file, this.blob(entry.digest))
    writeFileAtomic(
      path.join(this.entries, `${name}.json`),
      `${JSON.stringify({...entry, format: CACHE_FORMAT})}\n`,
      0o600,
    )
  }
}

/**
 * For prune: the push cache's entries of wafers that no longer exist (or are being pruned) and the
 * blobs no remaining entry names. Nothing while a push runs: it may be writing a blob whose entry
 * comes next. Only regular files are ever deleted, each by its own name (unlink follows no link).
 */
export function pushCacheSource(wafers: string): CacheSource {
  return async (remaining) => {
    if (await workDirsHeld(wafers, 'push')) {
      return {candidates: [], notes: ['the push cache was left alone: a push is running']}
    }

    const cache = new LayerCache(wafers)
    const candidates: PruneCandidate[] = []
    const named = new Set<string>()
    const fileCandidate = (file: string, name: string, blocks: number): PruneCandidate => ({
      name,
      path: file,
      remove: () => fs.unlink(file),
      size: blocks * 512,
    })
    const regularFiles = async (dir: string) => {
      if (!(await fs.lstat(dir).catch(() => undefined))?.isDirectory()) return []
      const found: Array<{blocks: number; entry: string; file: string}> = []
      for (const entry of (await fs.readdir(dir)).sort()) {
        const file = path.join(dir, entry)
        const stat = await fs.lstat(file).catch(() => undefined)
        if (stat?.isFile()) found.push({blocks: stat.blocks, entry, file})
      }

      return found
    }

    if (!(await fs.lstat(ociDir(wafers)).catch(() => undefined))?.isDirectory()) return {candidates}
    for (const {blocks, entry, file} of await regularFiles(cache.entries)) {
      const name = entry.replace(/\.json$/, '')
      if (entry.endsWith('.json') && isValidName(name) && remaining.has(name)) {
        try {
          const text = readStoreFile(file, `the cached layer of wafer ${name}`)
          if (text !== undefined) named.add(checkDigest((JSON.parse(text) as CachedLayer).digest, 'a cached layer'))
          continue
        } catch {
          // An entry that cannot be read is of no use to push either.
        }
      }

      candidates.push(fileCandidate(file, `push cache entry of ${name}`, blocks))
    }

    for (const {blocks, entry, file} of await regularFiles(cache.blobs)) {
      if (named.has(`sha256:${entry}`)) continue
      candidates.push(fileCandidate(file, `push cache blob ${entry.slice(0, 12)}`, blocks))
    }

    return {candidates}
  }
}
