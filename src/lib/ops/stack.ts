import {promises as fs, statSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {HookRunner, stackHookSteps, unstackWithHooks} from '../hooks.js'
import {SeedPlan, checkSeedTarget, createTitle} from '../seed/seed.js'
import {traceAncestry} from '../store/ancestry.js'
import {createWafer} from './create.js'
import {checkName} from '../store/names.js'
import {Locations, PRIVATE_DIR_MODE, WaferStore, isDirectory} from '../store/store.js'
import {checkOverlayfs, checkRoot, checkUpperFilesystem} from '../host/system.js'
import {plural} from '../ui/render.js'
import {syncOpaqueForms} from '../layer/markers.js'
import type {Step} from '../steps.js'
import {MountEntry, mountAt, readMountTable} from '../host/mounts.js'
import {mountStack, unmount} from '../mount/overlay.js'
import {checkLinksDir} from '../store/links.js'
import {readMeta} from '../store/meta.js'
import {ProcessUse, processesUsing} from '../host/processes.js'
import {LiveStack, hiddenStacks, hiddenWaferUses, liveStacks, stackConflicts} from '../mount/usage.js'
import {
  type DeclaredStack,
  declaredAsLive,
  declaredStacks,
  mountedMstacks,
  mstackPath,
  readMstack,
  removeMstack,
  writeMstack,
} from '../mount/mstack.js'

/** What `stack` did, as `--json` prints it. */
export interface StackResult {
  /** Whether it was already mounted, so nothing was done. */
  alreadyStacked: boolean
  /** Whether the top wafer was created by this call. */
  created: boolean
  /** The `data` directories of the stack, top first. */
  layers: string[]
  mountpoint: string
  name: string
  /** The top wafer's parent, or null for a base wafer. */
  parent: null | string
  /** The wafer names of the stack, top first. */
  wafers: string[]
}

/**
 * What one `stack` call knows of the host, read once and kept up to date as it mounts, so that
 * stacking N wafers in one call costs N mounts, not N passes over a mount table that grows with
 * every one of them: the mount table, the live stacks in it, the hidden ones (detached, in other
 * mount namespaces) and the stacks declared in $STACKS. Call it under the store lock: only this
 * call changes the store's stacks meanwhile.
 */
export class StackSession {
  private declaredStacks?: DeclaredStack[]
  private hiddenStacks?: LiveStack[]
  private liveStacks?: LiveStack[]
  /** The stacks this call mounted, by mount point; the table read at the start does not show them. */
  private readonly mounted = new Map<string, LiveStack>()
  private mountTable?: MountEntry[]

  async declared(store: WaferStore, stacks: string): Promise<DeclaredStack[]> {
    this.declaredStacks ??= declaredStacks(store, stacks)
    return this.declaredStacks
  }

  async hidden(store: WaferStore): Promise<LiveStack[]> {
    this.hiddenStacks ??= hiddenStacks(
      await hiddenWaferUses(store, {files: false, openFiles: 'affordable', table: await this.table()}),
    )
    return this.hiddenStacks
  }

  async live(store: WaferStore): Promise<LiveStack[]> {
    this.liveStacks ??= await liveStacks(store, await this.table())
    return [...this.liveStacks, ...this.mounted.values()]
  }

  /** Whether this call mounted a stack at `mountpoint`. */
  mountedHere(mountpoint: string): boolean {
    return this.mounted.has(mountpoint)
  }

  /** Records a stack this call mounted (or, with `undefined`, unmounted again) at `mountpoint`. */
  record(mountpoint: string, stack: LiveStack | undefined): void {
    if (stack === undefined) this.mounted.delete(mountpoint)
    else this.mounted.set(mountpoint, stack)
  }

  /** A `.mstack` was written: read $STACKS again next time. */
  stacksChanged(): void {
    this.declaredStacks = undefined
  }

  async table(): Promise<MountEntry[]> {
    this.mountTable ??= await readMountTable()
    return this.mountTable
  }
}

/** How to stack. */
export interface StackOptions {
  /** Stack even when a wafer would be both a writable top and a lower layer (overlayfs forbids it). */
  force?: boolean
  /** Runs plugins' prestack and poststack hooks around the mount. */
  hooks?: HookRunner
  /**
   * Write `$STACKS/NAME.mstack` (systemd.mstack(7)) for systemd to mount when a machine starts,
   * instead of mounting the stack now.
   */
  mstack?: boolean
  /** The seeder that fills a new base wafer. */
  seed?: SeedPlan
  /** Shared by the stacks of one call (see StackSession); each stack reads the host afresh without it. */
  session?: StackSession
  /** Called with each warning that --force let pass. */
  warn?: (message: string) => void
}

/** How to unstack. */
export interface UnstackOptions {
  /** Runs plugins' preunstack and postunstack hooks around the unmount. */
  hooks?: HookRunner
  /** Detach a busy stack anyway (`umount --lazy`): it goes away once its last user leaves. */
  lazy?: boolean
}

/** What `unstack` did for one name. */
export interface UnstackResult {
  mountpoint: string
  name: string
  /**
   * With --lazy: the processes that still use the detached stack (it goes away when they leave);
   * empty when none did and it is gone.
   */
  stillUsedBy?: ProcessUse[]
  /** False when nothing was stacked there. */
  unstacked: boolean
}

/**
 * The mount point of stack `name`, with symlinks in `$STACKS` resolved as the mount table shows
 * them.
 */
export async function mountpointOf(locations: Locations, name: string): Promise<string> {
  checkName(name)
  try {
    return path.join(await fs.realpath(locations.stacks), name)
  } catch (error) {
    if (isErrno(error, 'ENOENT')) return path.join(locations.stacks, name)
    throw error
  }
}

/**
 * The steps that stack wafer `name` (creating it on `parent` first if it does not exist) and the
 * result they fill in. Every check runs in the first step, before anything is created or mounted.
 */
export function stackSteps(
  locations: Locations,
  name: string,
  parent?: string,
  options: StackOptions = {},
): {result: StackResult; steps: Step[]} {
  const store = new WaferStore(locations.wafers)
  const result: StackResult = {
    alreadyStacked: false,
    created: false,
    layers: [],
    mountpoint: options.mstack ? mstackPath(locations.stacks, name) : path.join(locations.stacks, name),
    name,
    parent: parent ?? null,
    wafers: [],
  }
  let exists = false
  const count = () => plural(result.wafers.length, 'wafer')

  const trace: Step = {
    async run() {
      checkName(name)
      checkRoot()
      if (parent !== undefined) checkName(parent, 'parent name')
      const mountpoint = await mountpointOf(locations, name)
      result.mountpoint = options.mstack ? `${mountpoint}.mstack` : mountpoint
      exists = await store.exists(name)
      checkSeedTarget(options.seed, name, exists, parent)
      if (exists) {
        if (!(await store.hasData(name))) {
          throw new WafersError(`wafer ${name} has no data directory at ${store.dataDir(name)}.`)
        }

        const recorded = await store.readParent(name)
        if (parent !== undefined && parent !== recorded) {
          const actual = recorded === undefined ? 'is a base wafer with no parent' : `has parent ${recorded}`
          throw new WafersError(`wafer ${name} already exists and ${actual}, not ${parent}.`)
        }

        result.parent = recorded ?? null
      } else if (parent === undefined && options.seed === undefined) {
        throw new WafersError(`wafer ${name} not found in ${store.root}.`, {
          suggestions: [`Give a parent to create it: wafers stack ${name} PARENT`],
        })
      }

      result.wafers = await traceAncestry(store, name, exists ? undefined : parent)
      result.layers = result.wafers.map((wafer) => store.dataDir(wafer))
      const session = options.session ?? new StackSession()
      const table = await session.table()
      const declared = await session.declared(store, locations.stacks)
      if (options.mstack) {
        if (session.mountedHere(mountpoint)) {
          throw new WafersError(
            `${name} is mounted at ${mountpoint}; unstack it first to stack it as ${result.mountpoint}.`,
          )
        }

        result.alreadyStacked = await checkMstackTarget(
          store,
          name,
          mountpoint,
          result.mountpoint,
          result.wafers,
          table,
        )
      } else {
        // Mounted by this call: at $STACKS/NAME, so the stack of NAME.
        const mounted = session.mountedHere(result.mountpoint) ? undefined : mountAt(table, result.mountpoint)
        if (mounted) await checkStackOf(store, name, mounted)
        result.alreadyStacked = mounted !== undefined || session.mountedHere(result.mountpoint)
        if (!result.alreadyStacked && declared.some((stack) => stack.top === name)) {
          throw new WafersError(
            `${name} is stacked as ${mstackPath(locations.stacks, name)} for systemd to mount; unstack it first to mount it here.`,
          )
        }
      }

      if (!result.alreadyStacked) {
        if (!options.mstack) await checkMountpoint(result.mountpoint)
        await checkWorkDir(store.workDir(name))
        checkLinksDir(store)
        if (result.wafers.length > 1) {
          await checkOverlayfs()
          await checkUpperFilesystem(store.root)
        }

        // Stacks the table does not show count too: one detached with --lazy that a container still
        // runs in, one mounted in another mount namespace, or one kept only by a file a process
        // still has open (looked for when the host's open files are few enough to stat quickly).
        const hidden = await session.hidden(store)
        const own = options.mstack ? [] : declared.filter((stack) => stack.top !== name)
        const live = [
          ...(await session.live(store)),
          ...hidden,
          ...declaredAsLive(options.mstack ? declared : own),
          ...mountedMstacks(declared, table),
        ]
        const conflicts = stackConflicts(live, result.wafers, result.mountpoint)
        if (conflicts.length > 0) {
          const message = `stacking ${name} would make a wafer both a writable top and a lower layer, which overlayfs does not allow: ${conflicts.join('; ')}.`
          if (!options.force) {
            throw new WafersError(message, {
              suggestions: ['Unstack those stacks first, or pass --force to stack anyway.'],
            })
          }

          options.warn?.(`${message} Stacking anyway (--force); changes below a mounted top are undefined.`)
        }
      }

      return `Traced ${count()}: ${result.wafers.join(' <- ')}`
    },
    title: `Trace the ancestry of ${name}`,
  }

  const create: Step = {
    async run(report) {
      await createWafer(store, name, parent, result.wafers.slice(1), options.seed, report)
      result.created = true
    },
    skip: () => (exists ? `Wafer ${name} exists` : undefined),
    title: createTitle(name, parent, options.seed),
  }

  const check: Step = {
    async run() {
      // A layer taken from importctl shares its files' inodes with importctl's copy (docs/systemd.md):
      // as a stack's writable top, a change would write into importctl's files too.
      // (A meta.json that cannot be read says nothing of the kind; what reads it for more refuses it.)
      const top = (() => {
        try {
          return readMeta(store.dir(name), name)
        } catch {
          return {}
        }
      })() as ReturnType<typeof readMeta>
      if (top.imported?.by === 'importctl' && top.layer !== undefined) {
        throw new WafersError(
          `wafer ${name} is a layer shared with importctl by hard links, which a stack would write into; stack a new wafer on it instead.`,
          {suggestions: [`wafers stack ${name}-top ${name}`]},
        )
      }

      // Synchronous like the ancestry trace (see readParent in store.ts): one per layer.
      for (const data of result.layers) {
        const stat = statSync(data)
        if (!stat.isDirectory()) throw new WafersError(`${data} is not a directory.`)
      }

      if (result.wafers.length > 1) await fs.mkdir(store.workDir(name), {recursive: true})
      return `Checked ${plural(result.layers.length, 'layer')}`
    },
    skip: () => (result.alreadyStacked ? `Already stacked at ${result.mountpoint}` : undefined),
    title: 'Check the layers',
  }

  const mount: Step = {
    async run() {
      if (options.mstack) {
        // systemd's mounts read only user.overlay.* markers: give every opaque directory that form.
        let synced = 0
        for (const data of result.layers) synced += await syncOpaqueForms(data)
        await writeMstack(store, locations.stacks, result.wafers)
        options.session?.stacksChanged()
        const note =
          synced > 0 ? `; ${plural(synced, 'opaque directory', 'opaque directories')} given systemd's marker` : ''
        return `Wrote ${result.mountpoint} (${count()}) for systemd to mount${note}`
      }

      // A machine systemd ran on this wafer's .mstack marked its copy-ups in the user form only;
      // this mount reads the trusted form, and would show a user form it is given as an attribute.
      if (result.wafers.length > 1) await syncOpaqueForms(store.dataDir(name), 'trusted')

      await fs.mkdir(locations.stacks, {mode: PRIVATE_DIR_MODE, recursive: true})
      const made = await mkdirIfMissing(result.mountpoint)
      try {
        await mountStack(store, result.wafers, result.mountpoint)
      } catch (error) {
        if (made) await fs.rmdir(result.mountpoint).catch(() => {})
        throw error
      }

      options.session?.record(result.mountpoint, {
        lowers: result.wafers.slice(1),
        mountpoint: result.mountpoint,
        top: name,
      })

      return `Mounted ${count()} at ${result.mountpoint}`
    },
    skip: () => (result.alreadyStacked ? `Already stacked at ${result.mountpoint}` : undefined),
    title: options.mstack
      ? `Write ${mstackPath(locations.stacks, name)}`
      : `Mount the stack at ${path.join(locations.stacks, name)}`,
  }

  // Nothing is mounted for a .mstack, so there is no stack for plugins' hooks to see or undo.
  const hooks = options.mstack
    ? {post: [], pre: []}
    : stackHookSteps(
        options.hooks,
        () => ({layers: result.layers, mountpoint: result.mountpoint, name, wafers: result.wafers}),
        async () => {
          await unmount(result.mountpoint)
          options.session?.record(result.mountpoint, undefined)
          await fs.rmdir(result.mountpoint).catch(() => {})
        },
        () => (result.alreadyStacked ? `Already stacked at ${result.mountpoint}` : undefined),
      )
  return {result, steps: [trace, ...hooks.pre, create, check, mount, ...hooks.post]}
}

/** Unstacks `name`: unmounts `$STACKS/NAME` and removes its empty directory. Wafer data is untouched. */
export async function unstack(
  locations: Locations,
  name: string,
  options: UnstackOptions = {},
): Promise<UnstackResult> {
  const mountpoint = await mountpointOf(locations, name)
  checkRoot()
  const table = await readMountTable()
  const mounted = mountAt(table, mountpoint)
  if (mounted === undefined) {
    const store = new WaferStore(locations.wafers)
    const declared = readMstack(store, `${mountpoint}.mstack`)
    if (declared?.top === name) return unstackMstack(store, name, declared, table)
    // Nothing to remove: an empty directory here may be a stack's mount point in another mount
    // namespace, and rmdir would detach it there (Linux 3.18 and later).
    return {mountpoint, name, unstacked: false}
  }

  await checkStackOf(new WaferStore(locations.wafers), name, mounted)
  const ownDevice = mounted.fstype === 'overlay'
  const remount = async () => {
    const store = new WaferStore(locations.wafers)
    await fs.mkdir(mountpoint, {recursive: true})
    await mountStack(store, await traceAncestry(store, name), mountpoint)
  }

  const stillUsedBy = await unstackWithHooks(options.hooks, {mountpoint, name}, () => takeDown(), {remount})
  return {mountpoint, name, ...(stillUsedBy === undefined ? {} : {stillUsedBy}), unstacked: true}

  /** Unmounts it (refusing while in use, unless lazy) and says who still uses a lazily detached one. */
  async function takeDown() {
    // A container in its own mount namespace keeps the stack busy without making umount fail, so
    // look for roots and working directories in it first (cheap): unmounting under a container would
    // let `wafers rm` delete what it still uses. Open files show up as umount's "target is busy".
    if (!options.lazy) refuseBusy(name, mountpoint, await processesUsing(mountpoint, {ownDevice}))
    // Once detached the stack has no path to look for its users by: look first, open files too.
    const stillUsedBy = options.lazy ? await processesUsing(mountpoint, {openFiles: true, ownDevice}) : undefined
    try {
      await unmount(mountpoint, {lazy: options.lazy})
    } catch (error) {
      refuseBusy(name, mountpoint, await processesUsing(mountpoint, {openFiles: true, ownDevice}))
      throw error
    }

    await fs.rmdir(mountpoint).catch(() => {})
    // The copy-ups made while it was mounted carry the kernel's (trusted) form of opaque markers
    // only; a .mstack that holds the wafer (systemd's mounts read the user form) needs that form
    // too. Others do not get it: wafers' own mounts would show it in the tree as an attribute.
    // (Writing a .mstack gives all its layers both forms.)
    if (ownDevice) {
      const store = new WaferStore(locations.wafers)
      const inMstack = declaredStacks(store, locations.stacks).some(
        (declared) => declared.top === name || declared.lowers.includes(name),
      )
      if (inMstack) await syncOpaqueForms(store.dataDir(name), 'user')
    }

    return stillUsedBy
  }
}

/** Removes the `.mstack` of `name`, unless systemd has it mounted now. */
async function unstackMstack(
  store: WaferStore,
  name: string,
  declared: DeclaredStack,
  table: MountEntry[],
): Promise<UnstackResult> {
  const mounted = mountedMstacks([declared], table)
  if (mounted.length > 0) {
    throw new WafersError(
      `stack ${name} (${declared.path}) is mounted by systemd at ${mounted.map((stack) => stack.mountpoint).join(', ')}; it stays.`,
      {suggestions: [`Stop the machine first: machinectl stop ${name}`]},
    )
  }

  await removeMstack(declared.path)
  return {mountpoint: declared.path, name, unstacked: true}
}

/**
 * Refuses to treat what is mounted at a stack's mount point as wafer `name`'s stack when it is
 * something else (a tmpfs, another wafer's stack): stack would call it done, unstack would unmount
 * it.
 */
async function checkStackOf(store: WaferStore, name: string, mounted: MountEntry): Promise<void> {
  const stack = (await liveStacks(store, [mounted])).find((live) => live.mountpoint === mounted.mountpoint)
  if (stack?.top === name) return
  const what = stack?.top === undefined ? `${mounted.fstype} from ${mounted.source}` : `the stack of wafer ${stack.top}`
  throw new WafersError(`${mounted.mountpoint} has ${what} mounted, not a stack of wafer ${name}; unmount it first.`)
}

/** Refuses to unstack a stack that `users` keep busy, naming them. */
function refuseBusy(name: string, mountpoint: string, users: ProcessUse[]): void {
  if (users.length === 0) return
  const list = users.map((user) => `${user.pid} (${user.command})`).join(', ')
  throw new WafersError(`stack ${name} at ${mountpoint} is in use by ${list}; it stays mounted.`, {
    suggestions: ['Stop those processes, or pass --lazy to detach the stack anyway.'],
  })
}

/**
 * Whether `NAME.mstack` at `target` already stacks exactly `wafers` (true: nothing to do); refuses
 * one that stacks something else or that wafers did not write, and a stack of NAME mounted at
 * `mountpoint` (systemd would find two machines of one name).
 */
async function checkMstackTarget(
  store: WaferStore,
  name: string,
  mountpoint: string,
  target: string,
  wafers: string[],
  table: MountEntry[],
): Promise<boolean> {
  if (mountAt(table, mountpoint)) {
    throw new WafersError(`${name} is mounted at ${mountpoint}; unstack it first to stack it as ${target}.`)
  }

  const stat = await fs.lstat(target).catch(() => undefined)
  if (stat === undefined) return false
  const declared = stat.isDirectory() ? readMstack(store, target) : undefined
  if (declared === undefined) {
    throw new WafersError(`${target} exists and is not a stack wafers wrote for this store; move it away first.`)
  }

  const same = declared.top === name && declared.lowers.join('/') === wafers.slice(1).join('/')
  if (same) return true
  throw new WafersError(
    `${target} stacks ${[declared.top, ...declared.lowers].join(' <- ')}, not ${wafers.join(' <- ')}; unstack ${name} first.`,
  )
}

/** Refuses a mount point that is a symlink, not a directory, or a directory with something in it. */
async function checkMountpoint(mountpoint: string): Promise<void> {
  let stat
  try {
    stat = await fs.lstat(mountpoint)
  } catch (error) {
    if (isErrno(error, 'ENOENT')) return
    throw error
  }

  if (stat.isSymbolicLink()) throw new WafersError(`mount point ${mountpoint} is a symbolic link; remove it first.`)
  if (!stat.isDirectory()) throw new WafersError(`mount point ${mountpoint} exists and is not a directory.`)
  if ((await fs.readdir(mountpoint)).length > 0) {
    throw new WafersError(`mount point ${mountpoint} is not empty; stacking there would hide its files.`)
  }
}

/** Refuses a `work` that is there but not a directory (it could not be used or made). */
async function checkWorkDir(work: string): Promise<void> {
  const there = await fs.lstat(work).then(
    () => true,
    () => false,
  )
  if (there && !(await isDirectory(work))) {
    throw new WafersError(`${work} is not a directory; overlayfs needs it as scratch space.`)
  }
}

async function mkdirIfMissing(dir: string): Promise<boolean> {
  try {
    await fs.mkdir(dir)
    return true
  } catch (error) {
    if (isErrno(error, 'EEXIST')) return false
    throw error
  }
}
