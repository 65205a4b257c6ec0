/**
 * Where and how a build step's stack is mounted while the step runs: privately, under
 * /run/wafers (PRIVATE_MOUNTS), which only root may write to, or by nspawn itself when it can. Why:
 * a store others may write to lets them swap any name in it, so a step is mounted only through
 * paths nobody else can rename (the stage held open, `/proc/PID/fd/N`, or a store where only root
 * can rename: see onlyRootCanRename). Also what builds killed midway left mounted there.
 */
import {createHash, randomBytes} from 'node:crypto'
import {type Stats, promises as fs, lstatSync, realpathSync, statSync} from 'node:fs'
import path from 'node:path'

import {WafersError, asWafersError, isErrno} from '../errors.js'
import {type HookRunner, stackHookSteps, unstackWithHooks} from '../hooks.js'
import {mountsUnder, readMountTable} from '../host/mounts.js'
import {mountOverlay, unmount} from '../mount/overlay.js'
import {linksFor} from '../store/links.js'
import {type Stage as StoreStage, stageHeld} from '../store/staging.js'
import {WaferStore} from '../store/store.js'
import {fitsNspawnOverlay, nspawnPlaceholders, touchesNspawnPaths} from './run.js'

/**
 * The real path of the directory `held` (`/proc/PID/fd/N`) reaches, when the path names that very
 * directory right now (not a symlink swapped in for it); undefined otherwise.
 */
function realPathOfHeld(held: string): string | undefined {
  try {
    const real = realpathSync(held)
    const [now, ours] = [lstatSync(real), statSync(held)]
    return now.isDirectory() && now.ino === ours.ino && now.dev === ours.dev ? real : undefined
  } catch {
    return undefined
  }
}

/** Where builds mount their steps when nspawn does not (see StepMounts.privateMountpoint). */
const PRIVATE_MOUNTS = '/run/wafers'

/**
 * Unmounts and removes what builds of store `root` that are no longer running (their stage gone,
 * or no longer locked) left in `dir` (their directories of mount points, named like their stages).
 */
async function sweepMountpoints(root: string, dir: string): Promise<void> {
  for (const entry of await fs.readdir(dir)) {
    if (await stageHeld(root, entry)) continue // its build still runs

    const left = path.join(dir, entry)
    for (const {mountpoint} of mountsUnder(await readMountTable(), left).reverse()) {
      await unmount(mountpoint, {lazy: true}).catch(() => {})
    }

    for (const step of await fs.readdir(left).catch(() => [] as string[])) {
      const file = path.join(left, step)
      // Mount points, and lock files a killed nspawn left beside them (regular files only).
      if (step.startsWith('.#') && lstatSync(file).isFile()) await fs.unlink(file).catch(() => {})
      else await fs.rmdir(file).catch(() => {})
    }

    await fs.rmdir(left).catch(() => {})
  }
}

/**
 * Whether only root can rename or replace entries of directory `dir`: it and every directory above
 * it (real paths) belong to root and are writable by nobody else, or are sticky (/tmp) above an
 * entry that belongs to root. Anyone else who could would be able to swap a name wafers hands to a
 * program that resolves it later (nspawn's --overlay) for a symlink to anywhere on the host.
 */
export function onlyRootCanRename(dir: string): boolean {
  let real: string
  try {
    real = realpathSync(dir)
  } catch {
    return false
  }

  let child: Stats | undefined
  for (let at = real; ; at = path.dirname(at)) {
    const stat = lstatSync(at)
    const othersWrite = (stat.mode & 0o022) !== 0
    if (stat.uid !== 0) return false
    if (othersWrite && !((stat.mode & 0o1000) !== 0 && child !== undefined && child.uid === 0)) return false
    if (at === path.dirname(at)) return true
    child = stat
  }
}

/** A RUN that nspawn can run alone, mounting the step's overlay itself (see onStack). */
export interface DirectRun {
  /** Whether nothing must be looked up or made in the stack (`layers`, nearest first) beforehand. */
  alone: (layers: string[]) => Promise<boolean>
  /** Runs the step with nspawn in `root`, `overlay` (lowest first, the upper last) mounted on it. */
  runIn: (root: string, overlay: string[]) => Promise<void>
}

/** The mounts of one build's steps: where they go, and what of the last one can be used again. */
export class StepMounts {
  private nspawnRootMade?: string
  /**
   * The placeholders the last RUN had (in the build's stage), and the stack they were made for:
   * each layer's name and data directory inode, nearest first.
   */
  private placeholders?: {below: string[]; dir: string}
  /** Where this build mounts its steps (see privateMountpoint), made when first needed. */
  private runDir?: string
  private storeOnlyRoot?: boolean

  /** `stage`: the build's stage in the store, made when first asked for. */
  constructor(
    private readonly store: WaferStore,
    private readonly hooks: HookRunner | undefined,
    private readonly stage: () => Promise<StoreStage>,
  ) {}

  /**
   * Unmounts and removes what builds of this store that were killed left under PRIVATE_MOUNTS.
   * Call it before the build's stage is made: making it sweeps their stages, and a stage must not
   * be deleted while a step of it is still mounted.
   */
  async sweep(): Promise<void> {
    // A store not made yet (a first build FROM scratch) has nothing mounted of its own.
    if (lstatSync(this.store.root, {throwIfNoEntry: false}) === undefined) return
    const dir = await this.privateMountsDir(false)
    if (lstatSync(dir, {throwIfNoEntry: false})) await sweepMountpoints(this.store.root, dir)
  }

  /** Removes this build's directory of mount points, however the build ended. */
  async close(): Promise<void> {
    const {runDir} = this
    this.runDir = undefined
    if (runDir) {
      await fs.rmdir(runDir).catch(() => {})
      await fs.rmdir(path.dirname(runDir)).catch(() => {}) // when no other build of the store uses it
    }
  }

  /**
   * Shows the stack `wafers` (top first) read-only inside `beside`'s parent while `fn` runs: one
   * wafer is its data itself, more are a lower-only overlay through the store's short links.
   */
  async withView(beside: string, wafers: string[], fn: (view: string) => Promise<void>): Promise<void> {
    if (wafers.length === 1) return fn(this.store.dataDir(wafers[0]))
    const view = path.join(path.dirname(beside), 'from')
    await fs.mkdir(view)
    const ids = await linksFor(this.store, wafers)
    await mountOverlay(this.store, {lower: ids}, view, {held: true, what: `the view of ${wafers[0]}`})
    try {
      await fn(view)
    } finally {
      await unmount(view, {held: true})
      await fs.rmdir(view)
    }
  }

  /**
   * Mounts `below` under the staging `data` privately (inside the staging dir), runs `fill` there,
   * unmounts. For a RUN, the placeholders nspawn needs (see nspawnPlaceholders) lie between the
   * two, in a new directory in `scratch` (the build's stage, removed with it when the build ends).
   */
  async onStack(
    name: string,
    below: string[],
    data: string,
    report: (line: string) => void,
    fill: (root: string, upper: string) => Promise<void>,
    scratch?: string,
    direct?: DirectRun,
  ): Promise<void> {
    const forNspawn = scratch !== undefined
    if (below.length === 0 && !forNspawn) {
      await fill(data, data)
      return
    }

    const stage = path.dirname(data)
    let placeholders = ''
    if (forNspawn) {
      // The last RUN's placeholders fit again when all that changed below is new layers on its
      // stack that hold none of the paths they stand in for (most steps): nothing to look up or make.
      const last = this.placeholders
      const added = last === undefined ? -1 : below.length - last.below.length
      // A layer is the same one when its name and its data directory's inode are (not removed and
      // made again under that name meanwhile).
      const layerIds = below.map((wafer) => `${wafer}:${lstatSync(this.store.dataDir(wafer)).ino}`)
      if (
        last !== undefined &&
        added >= 0 &&
        layerIds.slice(added).every((id, index) => id === last.below[index]) &&
        !below.slice(0, added).some((wafer) => touchesNspawnPaths(this.store.dataDir(wafer)))
      ) {
        placeholders = last.dir
      } else {
        placeholders = path.join(scratch ?? stage, `nspawn-${randomBytes(6).toString('hex')}`)
        await nspawnPlaceholders(
          below.map((wafer) => this.store.dataDir(wafer)),
          placeholders,
        )
      }

      this.placeholders = {below: layerIds, dir: placeholders}
      const layers = [placeholders, ...below.map((wafer) => this.store.dataDir(wafer))]
      // No plugin listens to stack events and nothing needs the stack mounted here first: nspawn
      // mounts the same overlay itself, in its own mount namespace, which ends with it. Two programs
      // fewer per step (mount, umount), and no mount is left behind however the build ends.
      // nspawn mounts in a namespace where /proc/PID/fd/N does not lead back to our stage, so it is
      // given the stage's real path, checked to be the stage held right before nspawn starts.
      const held = direct && scratch && !this.hasStackHooks() && this.storeRenamedOnlyByRoot() ? [scratch, stage] : []
      const reals = held.map((dir) => realPathOfHeld(dir))
      const named = (file: string) => {
        const index = held.findIndex((dir) => file.startsWith(`${dir}/`))
        return index === -1 ? file : `${reals[index]}${file.slice(held[index].length)}`
      }

      const overlay = [...layers, data].map((file) => named(file))
      overlay.unshift(...overlay.splice(0, layers.length).reverse())
      if (
        held.length > 0 &&
        !reals.includes(undefined) &&
        fitsNspawnOverlay(overlay) &&
        (await direct!.alone(layers))
      ) {
        try {
          await direct!.runIn(named(await this.nspawnRoot(scratch!)), overlay)
        } finally {
          // nspawn's overlay work directory, beside the upper: gone when nspawn ends well.
          for (const entry of await fs.readdir(stage)) {
            if (entry.startsWith('.#')) await fs.rm(path.join(stage, entry), {force: true, recursive: true})
          }
        }

        return
      }
    }

    const mountpoint = await this.privateMountpoint()
    const hookOptions = {
      layers: [data, ...below.map((w) => this.store.dataDir(w))],
      mountpoint,
      name,
      wafers: [name, ...below],
    }
    // The stack hooks run as `wafers stack` runs them; a poststack failure is undone by the unmount below.
    const hookSteps = stackHookSteps(
      this.hooks,
      () => hookOptions,
      async () => {},
      () => undefined,
    )
    // No store lock here (it costs a process per step): a `wafers rm` of a layer before the mount
    // makes the mount fail, and after it the mount makes rm refuse. The stage is named only through
    // the descriptor the store holds (`/proc/PID/fd/N`), never by its swappable name in the store, so
    // its upper, work and placeholder paths are absolute; the wafers below are short links.
    try {
      for (const step of hookSteps.pre) await step.run(report)
      const lower = [...(forNspawn ? [placeholders] : []), ...(await linksFor(this.store, below))]
      const upper = {data, work: path.join(stage, 'work')}
      await mountOverlay(this.store, {lower, upper}, mountpoint, {held: true, what: `step ${name}`})
    } catch (error) {
      await fs.rmdir(mountpoint).catch(() => {})
      for (const wafer of below) {
        if (!(await this.store.hasData(wafer))) throw new WafersError(`wafer ${wafer} was removed meanwhile.`)
      }

      throw error
    }

    try {
      for (const step of hookSteps.post) await step.run(report)
      await fill(mountpoint, data)
    } finally {
      // As `wafers unstack` runs them, except that a plugin's failure is only reported: the stage comes down.
      await unstackWithHooks(
        this.hooks,
        {mountpoint, name},
        async () => {
          await unmount(mountpoint, {held: true})
          await fs.rmdir(mountpoint)
        },
        {report},
      )
    }
  }

  /**
   * Whether nobody but root can rename what is in the store (see onlyRootCanRename): only then may
   * nspawn be given the stage by its name, since nobody else can swap that name under it.
   */
  private storeRenamedOnlyByRoot(): boolean {
    this.storeOnlyRoot ??= onlyRootCanRename(this.store.root)
    return this.storeOnlyRoot
  }

  /** Whether a plugin listens to any stack event: it then sees each step mounted, as a stack is. */
  private hasStackHooks(): boolean {
    const {hooks} = this
    return (
      hooks !== undefined &&
      (['wafers:prestack', 'wafers:poststack', 'wafers:preunstack', 'wafers:postunstack'] as const).some((event) =>
        hooks.has(event),
      )
    )
  }

  /** The directory nspawn is given as the root when it mounts a step itself: it only asks for a /usr. */
  private async nspawnRoot(scratch: string): Promise<string> {
    const root = path.join(scratch, 'nspawn-root')
    if (this.nspawnRootMade !== root) {
      await fs.mkdir(path.join(root, 'usr'), {recursive: true})
      this.nspawnRootMade = root
    }

    return root
  }

  /**
   * A new empty directory to mount a step on, outside the store: under PRIVATE_MOUNTS, which only
   * root may write to, so that no name on the way to it can be swapped by someone who may write to
   * the store (nspawn, given the step's root, resolves that path by name). One directory per store
   * (its real path hashed) and build (its stage's name); the first use sweeps what builds of this
   * store killed before they could unmount (their stage no longer locked) left there.
   */
  private async privateMountpoint(): Promise<string> {
    if (this.runDir === undefined) {
      const staging = await this.stage()
      // Another build's close() may remove the store's directory in between: make it again.
      for (let tries = 0; this.runDir === undefined; tries++) {
        const dir = await this.privateMountsDir(true)
        const runDir = path.join(dir, path.basename(staging.dir))
        await fs.mkdir(runDir, {mode: 0o700}).then(
          () => {
            this.runDir = runDir
          },
          (error: unknown) => {
            if (!isErrno(error, 'ENOENT') || tries >= 3) throw asWafersError(error)
          },
        )
      }
    }

    const mountpoint = path.join(this.runDir, `step-${randomBytes(6).toString('hex')}`)
    await fs.mkdir(mountpoint).catch((error: unknown) => {
      throw asWafersError(error)
    })
    return mountpoint
  }

  /**
   * This store's directory under PRIVATE_MOUNTS (made when `make`), refused unless only root may
   * write to it and to every directory above it.
   */
  private async privateMountsDir(make: boolean): Promise<string> {
    const id = createHash('sha256').update(realpathSync(this.store.root)).digest('hex').slice(0, 16)
    const dir = path.join(PRIVATE_MOUNTS, id)
    for (const made of [PRIVATE_MOUNTS, dir]) {
      if (make) {
        await fs.mkdir(made, {mode: 0o700}).catch((error: unknown) => {
          if (!isErrno(error, 'EEXIST')) throw asWafersError(error)
        })
      }

      const stat = lstatSync(made, {throwIfNoEntry: false})
      if (stat === undefined && !make) return dir
      if (!stat?.isDirectory() || stat.uid !== 0 || (stat.mode & 0o022) !== 0 || !onlyRootCanRename(made)) {
        throw new WafersError(`${made} is not a directory only root may write to; wafers mounts build steps there.`, {
          suggestions: [`Remove it (it holds nothing wafers needs) and build again: rm -r ${made}`],
        })
      }
    }

    return dir
  }
}
