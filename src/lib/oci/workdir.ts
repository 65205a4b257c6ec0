import {randomBytes} from 'node:crypto'
import {promises as fs, rmSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {readStoreFile} from '../host/files.js'
import {isValidName} from '../store/names.js'
import {Lock, lockDirectory, tryLockDirectory, withLock} from '../store/lock.js'

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
 * `dispose` also removes `$WAFERS`, `.oci` and `.oci/tmp` if this call made them and they are
 * empty then (rmdir: never through a symlink, never what another run put there), so a failed run
 * leaves the disk as it found it. `underLock` runs under the store lock, once the directory is
 * made and held (a push records there which wafers it packs: see pushesPacking).
 */
export async function makeWorkDir(
  wafers: string,
  kind: string,
  options: {underLock?: (dir: string) => Promise<void>} = {},
): Promise<WorkDir> {
  const root = path.join(ociDir(wafers), 'tmp')
  const made: string[] = []
  for (let attempt = 0; ; attempt++) {
    try {
      return await tryMakeWorkDir(wafers, root, kind, made, options.underLock)
    } catch (error) {
      // Another run that failed removed the empty .oci/tmp it had made just as this one used it.
      if (!isErrno(error, 'ENOENT') || attempt >= 2) {
        await removeMade(made)
        throw error
      }
    }
  }
}

async function tryMakeWorkDir(
  wafers: string,
  root: string,
  kind: string,
  made: string[],
  underLock: ((dir: string) => Promise<void>) | undefined,
): Promise<WorkDir> {
  const first = await fs.mkdir(wafers, {recursive: true})
  if (first !== undefined) {
    // Every directory from the first one made down to $WAFERS was made now.
    for (let dir = wafers; ; dir = path.dirname(dir)) {
      made.unshift(dir)
      if (dir === first || dir === path.dirname(dir)) break
    }
  }

  // Anyone may write to $WAFERS: a symlink planted as .oci or .oci/tmp is refused, never followed.
  for (const dir of [ociDir(wafers), root]) {
    const created = await fs.mkdir(dir, {mode: 0o700}).then(
      () => true,
      (error: unknown) => {
        if (!isErrno(error, 'EEXIST')) throw error
        return false
      },
    )
    if (created) made.push(dir)
    const stat = await fs.lstat(dir)
    if (!stat.isDirectory()) throw new WafersError(`${dir} is not a directory; remove it.`)
  }

  // Made and locked under the store lock: prune decides under it whether a pull or push runs (see
  // workDirsHeld), so a run that begins while prune works waits, and looks at the store after it.
  const {dir, lock} = await withLock(wafers, async () => {
    await removeAbandoned(root)
    const dir = path.join(root, `${kind}-${randomBytes(6).toString('hex')}`)
    await fs.mkdir(dir, {mode: 0o700})
    const lock = await lockDirectory(dir)
    try {
      await underLock?.(dir)
    } catch (error) {
      await fs.rm(dir, {force: true, recursive: true})
      lock?.release()
      throw error
    }

    return {dir, lock}
  })
  return {
    async dispose() {
      // Synchronously: the few entries of a work dir go in a third of the time the thread pool's
      // round trips take (about 2 against 4.5 ms of every push), and nothing else is left to run.
      try {
        rmSync(dir, {force: true, recursive: true})
      } finally {
        lock?.release()
      }

      await removeMade(made)
    },
    path: dir,
  }
}

/** Removes the directories in `made`, deepest first, each only if it is (still) an empty directory. */
async function removeMade(made: string[]): Promise<void> {
  for (const dir of [...made].reverse()) {
    const removed = await fs.rmdir(dir).then(
      () => true,
      () => false,
    )
    if (!removed) break
  }
}

async function removeAbandoned(root: string): Promise<void> {
  for (const entry of await fs.readdir(root).catch(() => [] as string[])) {
    const dir = path.join(root, entry)
    const stat = await fs.lstat(dir).catch(() => undefined)
    // A directory made in the last minute may not be locked yet by the run that made it.
    if (!stat?.isDirectory() || Date.now() - stat.mtimeMs < 60_000) continue
    let lock: Lock | undefined
    try {
      lock = await lockDirectory(dir, {waitSeconds: 0.05})
    } catch {
      continue // in use by another pull or push
    }

    await fs.rm(dir, {force: true, recursive: true}).catch(() => {})
    lock?.release()
  }
}

/**
 * Whether a pull or push (`kind`) runs now against the store in `wafers`: one of its work
 * directories is locked. Asked under the store lock, the answer holds until that is released.
 */
export async function workDirsHeld(wafers: string, kind: 'pull' | 'push'): Promise<boolean> {
  const root = path.join(ociDir(wafers), 'tmp')
  for (const entry of await fs.readdir(root).catch(() => [] as string[])) {
    if (!entry.startsWith(`${kind}-`)) continue
    const dir = path.join(root, entry)
    if (!(await fs.lstat(dir).catch(() => undefined))?.isDirectory()) continue
    const lock = await tryLockDirectory(dir)
    if (lock === undefined) return true
    lock.release()
  }

  return false
}

/** The file in a push's work dir that names the wafers it packs, written under the store lock. */
export const PACKING_FILE = 'packing.json'

/**
 * The wafers that pushes running now pack (from their held work dirs' PACKING_FILE), or why one
 * cannot be told (a held push dir that names none): a split must leave them all alone. Asked
 * under the store lock, the answer holds until that is released, as a push names its wafers
 * under it, from an ancestry traced under it.
 */
export async function pushesPacking(wafers: string): Promise<{unknown: boolean; wafers: Set<string>}> {
  const root = path.join(ociDir(wafers), 'tmp')
  const found = {unknown: false, wafers: new Set<string>()}
  for (const entry of await fs.readdir(root).catch(() => [] as string[])) {
    if (!entry.startsWith('push-')) continue
    const dir = path.join(root, entry)
    if (!(await fs.lstat(dir).catch(() => undefined))?.isDirectory()) continue
    const lock = await tryLockDirectory(dir)
    if (lock !== undefined) {
      lock.release()
      continue
    }

    try {
      const text = readStoreFile(path.join(dir, PACKING_FILE), `the wafers a push packs (${dir})`)
      const names = text === undefined ? undefined : (JSON.parse(text) as unknown)
      if (!Array.isArray(names)) throw new Error('no list')
      for (const name of names) if (typeof name === 'string' && isValidName(name)) found.wafers.add(name)
    } catch {
      found.unknown = true
    }
  }

  return found
}
