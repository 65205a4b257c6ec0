import {randomBytes} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {Lock, lockDirectory} from '../lock.js'

/** `$WAFERS/.oci`: wafers' own OCI files (the push cache, temporary layouts); not a wafer name. */
export function ociDir(wafers: string): string {
  return path.join(wafers, '.oci')
}

/** A private temporary directory of a pull or push, locked for as long as it is in use. */
export interface WorkDir {
  /** Releases the lock and removes the directory. */
  dispose(): Promise<void>
  path: string
}

/**
 * Makes a temporary directory under `$WAFERS/.oci/tmp` (on the store's file system, so large
 * downloads never fill /tmp and finished blobs can be hard-linked), and holds a flock on it while
 * it is in use. Directories left by a killed pull or push are removed first: their lock is free.
 * A lock, not a PID, says whether one is still in use, so other PID namespaces are safe.
 */
export async function makeWorkDir(wafers: string, kind: string): Promise<WorkDir> {
  const root = path.join(ociDir(wafers), 'tmp')
  await fs.mkdir(root, {mode: 0o700, recursive: true})
  const stat = await fs.lstat(root)
  if (!stat.isDirectory()) throw new WafersError(`${root} is not a directory; remove it.`)
  await removeAbandoned(root)
  const dir = path.join(root, `${kind}-${randomBytes(6).toString('hex')}`)
  await fs.mkdir(dir, {mode: 0o700})
  const lock = await lockDirectory(dir)
  return {
    async dispose() {
      await fs.rm(dir, {force: true, recursive: true})
      lock?.release()
    },
    path: dir,
  }
}

async function removeAbandoned(root: string): Promise<void> {
  for (const entry of await fs.readdir(root).catch(() => [] as string[])) {
    const dir = path.join(root, entry)
    // eslint-disable-next-line no-await-in-loop
    const stat = await fs.lstat(dir).catch(() => undefined)
    // A directory made in the last minute may not be locked yet by the run that made it.
    if (!stat?.isDirectory() || Date.now() - stat.mtimeMs < 60_000) continue
    let lock: Lock | undefined
    try {
      // eslint-disable-next-line no-await-in-loop
      lock = await lockDirectory(dir, {waitSeconds: 0.05})
    } catch {
      continue // in use by another pull or push
    }

    // eslint-disable-next-line no-await-in-loop
    await fs.rm(dir, {force: true, recursive: true}).catch(() => {})
    lock?.release()
  }
}
