/**
 * Stacks as systemd mounts them itself (systemd.mstack(7), systemd 260 and later): a directory
 * `$STACKS/NAME.mstack/` whose `layer@N` entries are the lower layers, bottom first (N sorts by
 * version), and whose `rw` is the writable top (its `data` the upper, its `work` the scratch).
 * A wafer's directory already is such an `rw`, and its ancestry the `layer@` list, so wafers writes
 * links only: `layer@0 -> $WAFERS/BASE/data` ... `rw -> $WAFERS/NAME`. Nothing is mounted until
 * systemd-nspawn, `systemd-mstack --mount` or a unit's RootMStack= mounts it, always with
 * `userxattr`: those mounts read only `user.overlay.*` markers (see layer/whiteouts.ts).
 */
import {randomBytes} from 'node:crypto'
import {closeSync, constants, promises as fs, lstatSync, openSync, readdirSync, readlinkSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import type {MountEntry} from '../host/mounts.js'
import {isValidName} from '../store/names.js'
import {PRIVATE_DIR_MODE, type WaferStore} from '../store/store.js'
import type {LiveStack} from './usage.js'

/** The suffix systemd looks for. */
export const MSTACK_SUFFIX = '.mstack'

/** The `.mstack` directory of stack `name` in `stacks`. */
export function mstackPath(stacks: string, name: string): string {
  return path.join(stacks, `${name}${MSTACK_SUFFIX}`)
}

/** A `.mstack` directory found in $STACKS whose layers are this store's wafers. */
export interface DeclaredStack {
  /** The wafers below the top, nearest first (as LiveStack has them). */
  lowers: string[]
  /** The `.mstack` directory. */
  path: string
  /** The wafer whose directory is `rw`. */
  top: string
}

/** The entry name of lower layer `index` (0 is the bottom). */
function layerEntry(index: number): string {
  return `layer@${index}`
}

/**
 * Writes `$STACKS/NAME.mstack` for `wafers` (top first): links only, made under a hidden name and
 * renamed into place, so a reader never sees half of one. Refuses when something is there.
 */
export async function writeMstack(store: WaferStore, stacks: string, wafers: string[]): Promise<string> {
  const [top, ...lowers] = wafers
  const target = mstackPath(stacks, top)
  if (lstatSync(target, {throwIfNoEntry: false}) !== undefined) {
    throw new WafersError(`${target} already exists; unstack ${top} first.`)
  }

  await fs.mkdir(stacks, {mode: PRIVATE_DIR_MODE, recursive: true})
  const staging = path.join(stacks, `.${top}${MSTACK_SUFFIX}-${randomBytes(4).toString('hex')}`)
  await fs.mkdir(staging, {mode: 0o755})
  try {
    const bottomFirst = [...lowers].reverse()
    for (const [index, wafer] of bottomFirst.entries()) {
      await fs.symlink(store.dataDir(wafer), path.join(staging, layerEntry(index)))
    }

    await fs.mkdir(store.workDir(top), {recursive: true})
    await fs.symlink(store.dir(top), path.join(staging, 'rw'))
    await fs.rename(staging, target)
  } catch (error) {
    await fs.rm(staging, {force: true, recursive: true})
    if (isErrno(error, 'ENOTEMPTY') || isErrno(error, 'EEXIST')) {
      throw new WafersError(`${target} appeared meanwhile; unstack ${top} first.`)
    }

    throw error
  }

  return target
}

/**
 * Reads `.mstack` directory `dir` without following anything in it: the wafer each link names in
 * `store`, or undefined when it is not a stack of this store's wafers (made by hand for other
 * roots, or not by wafers).
 */
export function readMstack(store: WaferStore, dir: string): DeclaredStack | undefined {
  const root = store.root
  const waferOfLink = (link: string, suffix: string[]): string | undefined => {
    let target: string
    try {
      target = readlinkSync(link)
    } catch {
      return undefined
    }

    const parts = path.relative(root, target).split(path.sep)
    if (parts.length !== 1 + suffix.length || parts[0] === '..' || !isValidName(parts[0])) return undefined
    return suffix.every((part, i) => parts[i + 1] === part) ? parts[0] : undefined
  }

  // Never through a link someone put at NAME.mstack: only a real directory is read.
  const held = holdDirectory(dir)
  if (held === undefined) return undefined
  try {
    const entries = readdirSync(held.path)
    dir = held.path
    const top = entries.includes('rw') ? waferOfLink(path.join(dir, 'rw'), []) : undefined
    if (top === undefined) return undefined
    const layers = entries
      .map((entry) => /^layer@(\d+)$/.exec(entry))
      .filter((match) => match !== null)
      .sort((a, b) => Number(a[1]) - Number(b[1]))
    const lowers: string[] = []
    for (const match of layers) {
      const wafer = waferOfLink(path.join(dir, match[0]), ['data'])
      if (wafer === undefined) return undefined
      lowers.unshift(wafer)
    }

    return {lowers, path: held.named, top}
  } finally {
    held.close()
  }
}

/** Opens `dir` O_DIRECTORY|O_NOFOLLOW: a path through the descriptor, or undefined if it is no real directory. */
function holdDirectory(dir: string): {close(): void; named: string; path: string} | undefined {
  let fd: number
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  } catch {
    return undefined
  }

  return {close: () => closeSync(fd), named: dir, path: `/proc/self/fd/${fd}`}
}

/** Every `.mstack` in `stacks` that stacks this store's wafers, in name order. */
export function declaredStacks(store: WaferStore, stacks: string): DeclaredStack[] {
  let entries: string[]
  try {
    entries = readdirSync(stacks)
  } catch {
    return []
  }

  const found: DeclaredStack[] = []
  for (const entry of entries.sort()) {
    if (!entry.endsWith(MSTACK_SUFFIX) || !isValidName(entry.slice(0, -MSTACK_SUFFIX.length))) continue
    const dir = path.join(stacks, entry)
    if (!lstatSync(dir, {throwIfNoEntry: false})?.isDirectory()) continue
    const declared = readMstack(store, dir)
    if (declared) found.push(declared)
  }

  return found
}

/**
 * The declared stacks that systemd has mounted right now, as live stacks: systemd mounts each
 * layer by file descriptor through temporary directories, so its mount table line names only the
 * `.mstack` it came from, as the mount's source.
 */
export function mountedMstacks(declared: DeclaredStack[], table: MountEntry[]): LiveStack[] {
  const live: LiveStack[] = []
  for (const entry of table) {
    if (entry.fstype !== 'overlay' || !entry.source.endsWith(MSTACK_SUFFIX)) continue
    const stack = declared.find((one) => path.basename(one.path) === path.basename(entry.source))
    if (stack) live.push({lowers: stack.lowers, mountpoint: entry.mountpoint, top: stack.top})
  }

  return live
}

/**
 * The declared stacks as stackConflicts takes them: a `.mstack` names a writable top that systemd
 * may mount at any time, so it counts as stacked, at its own path.
 */
export function declaredAsLive(declared: DeclaredStack[]): LiveStack[] {
  return declared.map((stack) => ({lowers: stack.lowers, mountpoint: stack.path, top: stack.top}))
}

/**
 * Removes `.mstack` directory `dir` that readMstack read as a stack of this store: the links wafers
 * writes (`layer@N`, `rw`), then the directory, all through one descriptor of it opened without
 * following a link. One that holds anything else is refused before anything is removed.
 */
export async function removeMstack(dir: string): Promise<void> {
  const held = holdDirectory(dir)
  if (held === undefined) throw new WafersError(`${dir} is not a directory wafers wrote; it is left as it is.`)
  try {
    const entries = readdirSync(held.path)
    const ours = entries.filter(
      (entry) =>
        (entry === 'rw' || /^layer@\d+$/.test(entry)) &&
        lstatSync(path.join(held.path, entry), {throwIfNoEntry: false})?.isSymbolicLink(),
    )
    const others = entries.filter((entry) => !ours.includes(entry))
    if (others.length > 0) {
      throw new WafersError(
        `${dir} holds more than wafers wrote (${others.slice(0, 5).join(', ')}); nothing was removed.`,
        {suggestions: ['Move those entries away, then unstack again.']},
      )
    }

    for (const entry of ours) await fs.unlink(path.join(held.path, entry))
  } finally {
    held.close()
  }

  try {
    await fs.rmdir(dir)
  } catch (error) {
    if (!isErrno(error, 'ENOENT')) throw error
  }
}

/**
 * Where `.mstack` directory `dir` is mounted right now, in this mount namespace or any other (a
 * machine systemd-nspawn runs mounts it in its own), or where processes work in it; undefined
 * when nowhere. systemd names the `.mstack` as the mount's source, as mountedMstacks reads it.
 */
export async function mstackInUse(dir: string): Promise<string | undefined> {
  const {parseMountInfo} = await import('../host/mounts.js')
  const {processesUsing} = await import('../host/processes.js')
  const {readProcFile} = await import('../host/files.js')
  const base = path.basename(dir)
  const seen = new Set<string>()
  const own = readlinkSync('/proc/self/ns/mnt')
  for (const pid of ['self', ...readdirSync('/proc').filter((entry) => /^\d+$/.test(entry))]) {
    let namespace: string
    try {
      namespace = readlinkSync(`/proc/${pid}/ns/mnt`)
    } catch {
      continue
    }

    if (seen.has(namespace)) continue
    seen.add(namespace)
    const table = readProcFile(`/proc/${pid}/mountinfo`, 4 * 1024 * 1024)
    if (table === undefined) continue
    const entry = parseMountInfo(table).find(
      (one) => one.fstype === 'overlay' && path.basename(one.source) === base,
    )
    if (entry === undefined) continue
    const comm = readProcFile(`/proc/${pid}/comm`)?.trim() ?? '?'
    return namespace === own
      ? `mounted at ${entry.mountpoint}`
      : `mounted at ${entry.mountpoint} in the mount namespace of ${pid} (${comm})`
  }

  const users = await processesUsing(dir, {openFiles: true})
  if (users.length > 0) {
    return `used by ${users.map((user) => `${user.pid} (${user.command})`).join(', ')}`
  }

  return undefined
}
