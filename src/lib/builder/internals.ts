/**
 * How a step that makes a wafer is made (moby's internals): its cache key probed, the step claimed
 * so that no two builds make it at once, its wafer made in the build's stage on the stack below.
 */
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {checkOverlayfs, checkUpperFilesystem} from '../host/system.js'
import {traceAncestry} from '../store/ancestry.js'
import type {BuildMeta, HistoryEntry} from '../store/meta.js'
import {type Stage as StoreStage, discardStage} from '../store/staging.js'
import {WaferExistsError, WaferStore} from '../store/store.js'
import type {BuildOptions} from './build.js'
import {isCached, probeStep, stepKey} from './cache.js'
import {type StepClaim, claimStep, removeAbandonedClaims} from './claims.js'
import {historyEntry} from './finish.js'
import type {Instruction} from './parser.js'
import {type DirectRun, StepMounts} from './step-mount.js'

/** What a step that makes a wafer did, as `--json` prints it (see BuildStepResult). */
export interface StepOutcome {
  cached: boolean
  wafer: null | string
}

/** What of a stage a step reads and moves on: its top wafer, what that is, and its history. */
export interface StepStage {
  allCached: boolean
  history: HistoryEntry[]
  identity: string
  top?: string
}

/** One step that makes a wafer. */
export interface StepSpec {
  /** Set for a RUN that nspawn may run alone, mounting the step itself. */
  direct?: DirectRun
  /** Fills the new wafer: `root` is the step's stack mounted, `upper` the new wafer's data. */
  fill: (root: string, upper: string) => Promise<void>
  instruction: Instruction
  /** The step's number in the file, for messages. */
  number: number
  /** What the step copies, for its cache key (see StepKeyInput). */
  sources?: string
  /** The state RUN and COPY see, for its cache key (see StepKeyInput). */
  state: unknown
}

/** The wafers one build's steps make, in the build's stage in the store. */
export class StepWafers {
  readonly mounts: StepMounts
  private claimsSwept = false
  private overlayChecked = false
  /** The stage every step's wafer is made in (see WaferStore.openStage), made at the first step that makes one. */
  private staging?: StoreStage
  /** The wafers this build went on from (cached steps, FROM's base) before it held its stage. */
  private readonly reused: string[] = []

  constructor(
    private readonly store: WaferStore,
    private readonly options: Pick<BuildOptions, 'hooks' | 'name' | 'noCache' | 'signal'>,
  ) {
    this.mounts = new StepMounts(store, options.hooks, async () => this.stagingDir())
  }

  /**
   * A step that makes a wafer: reuses the cached one for its key, or makes it with `fill` running
   * on the stack of the stage's top plus the new wafer's staging data, mounted privately.
   */
  async make(stage: StepStage, step: StepSpec, report: (line: string) => void): Promise<StepOutcome> {
    const {direct, fill, instruction, sources, state} = step
    const key = stepKey({parent: stage.identity, sources, state, text: instruction.text})
    const parent = stage.top
    let {cached, name} = await probeStep(this.store, key, parent, this.options.noCache)
    // The build holds its stage from its first step that is not cached, so that prune, which keeps
    // the build- wafers while any build holds one, leaves every step it takes from then on alone;
    // the ones it took before are checked when it takes the stage (stagingDir). A build whose every
    // step is cached, and that reads no other stage's or wafer's files (COPY --from, RUN --mount
    // from= take the stage first), takes no lock and starts no process.
    if (cached) {
      this.found(name)
    } else {
      await this.stagingDir()
      // Another build of the same step waits here for this one, and then finds it cached.
      const claim = await this.claim(key, instruction, step.number, report)
      try {
        ;({cached, name} = await probeStep(this.store, key, parent, this.options.noCache))
        if (!cached) await this.makeStep(name, key, parent, instruction, report, fill, direct)
      } finally {
        claim.release()
      }
    }

    stage.top = name
    stage.identity = name
    stage.allCached &&= cached
    try {
      stage.history.push(historyEntry(instruction.text, this.store.dataDir(name)))
    } catch (error) {
      if (cached && isErrno(error, 'ENOENT')) throw removedMeanwhile(name)
      throw error
    }

    return {cached: stage.allCached, wafer: name}
  }

  /**
   * Records a wafer the build goes on from (a cached step, FROM's base) while it holds no stage yet:
   * prune may remove it until the build does, so stagingDir checks it is still there then.
   */
  found(wafer: string): void {
    if (this.staging === undefined) this.reused.push(wafer)
  }

  /** Claims the step with `key` (see claimStep), saying so when another build holds it. */
  private async claim(
    key: string,
    instruction: Instruction,
    step: number,
    report: (line: string) => void,
  ): Promise<StepClaim> {
    // The build's stage is what the claim names (alive while it is locked); making it swept the
    // stages of builds that died, so the claims naming those can go now.
    const within = await this.stagingDir()
    if (!this.claimsSwept) {
      removeAbandonedClaims(this.store.root)
      this.claimsSwept = true
    }

    try {
      return await claimStep(
        this.store.root,
        key,
        path.basename(within.dir),
        () => report('waiting for another build making this step'),
        this.options.signal,
      )
    } catch (error) {
      if (error instanceof WafersError && error.exit !== 1) {
        throw new WafersError(
          `interrupted during step ${step} (${instruction.text}) while waiting for another build making it; no wafer was made for it.`,
          {exit: error.exit},
        )
      }

      throw error
    }
  }

  /**
   * Makes wafer `name`, the step with `key` on `parent`, by running `fill` on the stack below. When
   * another build made the same wafer meanwhile (one that took no step lock), that wafer is the
   * step's result as well, and this build's own staging is discarded.
   */
  private async makeStep(
    name: string,
    key: string,
    parent: string | undefined,
    instruction: Instruction,
    report: (line: string) => void,
    fill: (root: string, upper: string) => Promise<void>,
    direct?: DirectRun,
  ): Promise<void> {
    const below = parent === undefined ? [] : await traceAncestry(this.store, parent)
    if (below.length > 0 && !this.overlayChecked) {
      await checkOverlayfs()
      await checkUpperFilesystem(this.store.root)
      this.overlayChecked = true
    }

    const build: BuildMeta = {instruction: instruction.text, key}
    const within = await this.stagingDir()
    try {
      await this.store.create(name, parent, {
        fill: async (data) => {
          const scratch = instruction.keyword === 'RUN' ? within.held : undefined
          await this.mounts.onStack(name, below, data, report, fill, scratch, direct)
          // create writes meta.json after fill: the history can say whether the step changed anything.
          build.history = [historyEntry(instruction.text, data)]
        },
        meta: {build},
        parentData: below[0] === undefined ? undefined : this.store.dataDir(below[0]),
        within,
      })
    } catch (error) {
      if (error instanceof WaferExistsError && (await isCached(this.store, name, key, parent))) return
      throw error
    }
  }

  /** The build's stage in the store (see `staging`), made when first asked for. */
  async stagingDir(): Promise<StoreStage> {
    if (this.staging === undefined) {
      // What killed builds left mounted goes first: making the stage sweeps their stages, and a
      // stage must not be deleted while a step of it is still mounted.
      await this.mounts.sweep()
      this.staging = await this.store.openStage(`build-${this.options.name}`)
      // Prune may have run between the cache probes and the stage: what it left is kept from now on.
      for (const wafer of this.reused.splice(0)) {
        if (!(await this.store.hasData(wafer))) throw removedMeanwhile(wafer)
      }
    }

    return this.staging
  }

  /**
   * Runs `read` on wafer `wafer`, which the build found (a base FROM names) and holds no stage
   * for yet: when it fails because the wafer was removed meanwhile (rm, prune), it says so.
   */
  async reading<T>(wafer: string, read: () => Promise<T> | T): Promise<T> {
    try {
      return await read()
    } catch (error) {
      if (!(await this.store.hasData(wafer))) throw removedMeanwhile(wafer)
      throw error
    }
  }

  /** Removes the build's stage and what is left in it (nspawn's placeholders), however the build ended. */
  async close(): Promise<void> {
    const {staging} = this
    this.staging = undefined
    await this.mounts.close()
    if (staging) await discardStage(this.store.root, staging)
  }
}

/** The error of a build that found wafer `wafer` (a cached step, its base) gone while it ran. */
function removedMeanwhile(wafer: string): WafersError {
  return new WafersError(`wafer ${wafer}, which this build goes on from, was removed while the build ran; build again.`)
}
