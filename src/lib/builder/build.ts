import {createHash, randomBytes} from 'node:crypto'
import {type Stats, promises as fs, lstatSync, readdirSync, realpathSync, statSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {traceAncestry} from '../store/ancestry.js'
import {WafersError, asWafersError, isErrno, quote} from '../errors.js'
import {readStoreFile, writeFileAtomic} from '../host/files.js'
import {type HookRunner, fireHook} from '../hooks.js'
import {withLock} from '../store/lock.js'
import {
  type BuildMeta,
  type HistoryEntry,
  type ImageConfig,
  type ImageMeta,
  readMeta,
  writeMeta,
} from '../store/meta.js'
import {isValidName} from '../store/names.js'
import type {RegistryOptions} from '../oci/skopeo.js'
import {mountsUnder, readMountTable} from '../host/mounts.js'
import {MAX_OPTIONS_LENGTH, linksFor, unmount} from '../mount/overlay.js'
import type {Step} from '../steps.js'
import {type Stage as StoreStage, discardStage, stageHeld} from '../store/staging.js'
import {Locations, WaferExistsError, WaferStore} from '../store/store.js'
import {checkOverlayfs, checkRoot, checkUpperFilesystem} from '../host/system.js'
import {liveStacks} from '../mount/usage.js'
import {baseIdentity, isCached, newestGeneration, stepKey, stepWaferName} from './cache.js'
import {IgnoreRules, NO_IGNORE, type CopyPlan, hashPlan, planCopy} from './context.js'
import {copyInto, isArchive, mkdirIn, parseChmod, unpackArchive} from './copy.js'
import {
  type Containerfile,
  type Instruction,
  type Variables,
  execForm,
  keyValues,
  parseContainerfile,
  splitFlags,
  substituteEach,
  words,
} from './parser.js'
import {containerPath, resolveInRoot} from './paths.js'
import {
  fitsNspawnOverlay,
  isDirectoryIn,
  nspawnPlaceholders,
  type RunSpec,
  runFailed,
  runInRoot,
  touchesNspawnPaths,
} from './run.js'
import {type StepLock, lockStep, removeAbandonedStepLocks} from './step-lock.js'
import {parseChown, runAs} from './users.js'

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

/** Where builds mount their steps when nspawn does not (see Builder.privateMountpoint). */
const PRIVATE_MOUNTS = '/run/wafers'

/**
 * Unmounts and removes what builds of store `root` that are no longer running (their stage gone,
 * or no longer locked) left in `dir` (their directories of mount points, named like their stages).
 */
async function sweepMountpoints(root: string, dir: string): Promise<void> {
  for (const entry of await fs.readdir(dir)) {
    // eslint-disable-next-line no-await-in-loop
    if (await stageHeld(root, entry)) continue // its build still runs

    const left = path.join(dir, entry)
    // eslint-disable-next-line no-await-in-loop
    for (const {mountpoint} of mountsUnder(await readMountTable(), left).reverse()) {
      // eslint-disable-next-line no-await-in-loop
      await unmount(mountpoint, {lazy: true}).catch(() => {})
    }

    // eslint-disable-next-line no-await-in-loop
    for (const step of await fs.readdir(left).catch(() => [] as string[])) {
      const file = path.join(left, step)
      // Mount points, and lock files a killed nspawn left beside them (regular files only).
      // eslint-disable-next-line no-await-in-loop
      if (step.startsWith('.#') && lstatSync(file).isFile()) await fs.unlink(file).catch(() => {})
      // eslint-disable-next-line no-await-in-loop
      else await fs.rmdir(file).catch(() => {})
    }

    // eslint-disable-next-line no-await-in-loop
    await fs.rmdir(left).catch(() => {})
  }
}

/**
 * Whether only root can rename or replace entries of directory `dir`: it and every directory above
 * it (real paths) belong to root and are writable by nobody else, or are sticky (/tmp) above an
 * entry that belongs to root. Anyone else who could would be able to swap a name wafers hands to a
 * program that resolves it later (nspawn's --overlay) for a symlink to anywhere on the host.
 */
function onlyRootRenames(dir: string): boolean {
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
interface DirectRun {
  /** Whether nothing must be looked up or made in the stack (`layers`, nearest first) beforehand. */
  alone: (layers: string[]) => Promise<boolean>
  /** Runs the step with nspawn in `root`, `overlay` (lowest first, the upper last) mounted on it. */
  runIn: (root: string, overlay: string[]) => Promise<void>
}

/** What `wafers build` is asked to do. */
export interface BuildOptions {
  /** `--build-arg K=V` values. */
  buildArgs: Record<string, string>
  /** The build context directory. */
  context: string
  /** The Containerfile; default CONTEXT/Containerfile, then CONTEXT/Dockerfile. */
  file?: string
  /** Fires plugins' stack hooks around each step's private mount. */
  hooks?: HookRunner
  /** The wafer the build ends in. */
  name: string
  /** Rebuild every step, whatever the cache holds. */
  noCache?: boolean
  /** How FROM pulls images: `--tls-verify`, `--creds`, `--authfile`. */
  registry?: RegistryOptions
  /** Aborted on Ctrl-C: the RUN under way is stopped, nothing new starts. */
  signal?: AbortSignal
}

/** What one instruction did, as `--json` prints it. */
export interface BuildStepResult {
  /** Whether its result came from the cache (nothing was run or copied). */
  cached: boolean
  instruction: string
  /** The wafer it made or reused; null for a step that makes none (metadata steps, FROM scratch). */
  wafer: null | string
}

/** What `wafers build` did, as `--json` prints it. */
export interface BuildResult {
  name: string
  steps: BuildStepResult[]
}

/** One stage (`FROM ... [AS name]` and what follows) while it is being built. */
interface Stage {
  /** Whether every step of it so far came from the cache. */
  allCached: boolean
  /** ARGs declared in the stage, with their values. */
  args: Map<string, string>
  /** Whether the stage set CMD itself (an ENTRYPOINT then keeps it). */
  cmdSet?: boolean
  config: ImageConfig
  history: HistoryEntry[]
  /** What the top wafer is, for cache keys. */
  identity: string
  image: {architecture: string; os: string; variant?: string}
  name?: string
  shell: string[]
  /** The stage's top wafer so far; undefined while it is empty (FROM scratch). */
  top?: string
}

const DEFAULT_SHELL = ['/bin/sh', '-c']

/** Reads and parses the Containerfile of a build: `file`, or CONTEXT/Containerfile, then CONTEXT/Dockerfile. */
export function readContainerfile(context: string, file?: string): {containerfile: Containerfile; path: string} {
  const candidates =
    file === undefined ? ['Containerfile', 'Dockerfile'].map((f) => path.join(context, f)) : [path.resolve(file)]
  for (const candidate of candidates) {
    // The user's own file: a link inside the context is followed, within the context only.
    const rel = path.relative(context, candidate)
    const inside = !rel.startsWith('..') && !path.isAbsolute(rel)
    const text = readStoreFile(inside ? resolveInRoot(context, rel) : candidate, candidate, 4 * 1024 * 1024)
    if (text !== undefined) return {containerfile: parseContainerfile(text), path: candidate}
  }

  throw new WafersError(
    file === undefined ? `there is no Containerfile or Dockerfile in ${context}.` : `there is no file ${file}.`,
    {suggestions: ['Give one with -f FILE.']},
  )
}

/**
 * The steps that build wafer `name` from a Containerfile, one per instruction and a last one that
 * points NAME at the result, and the result they fill in. Checks (root, context, the file's syntax,
 * NAME) run before anything is made. `close` must be called however the steps end: it removes the
 * build's staging directory.
 */
export function buildSteps(
  locations: Locations,
  options: BuildOptions,
): {close: () => Promise<void>; result: BuildResult; steps: Step[]} {
  checkRoot()
  if (!isValidName(options.name)) {
    throw new WafersError(`${quote(options.name)} is not a valid wafer name (letters, digits, -, _, ., at most 64).`)
  }

  const context = path.resolve(options.context)
  let contextStat
  try {
    contextStat = lstatSync(context)
  } catch {
    throw new WafersError(`the build context ${context} does not exist.`)
  }

  if (!contextStat.isDirectory()) throw new WafersError(`the build context ${context} is not a directory.`)
  const {containerfile} = readContainerfile(context, options.file)
  checkInstructions(containerfile)
  const store = new WaferStore(locations.wafers)
  const builder = new Builder(locations, store, context, containerfile, options)
  return {close: async () => builder.close(), result: builder.result, steps: builder.steps()}
}

class Builder {
  readonly result: BuildResult
  private current?: Stage
  private readonly escape: string
  private readonly globalArgs: Variables = new Map()
  private ignore?: IgnoreRules
  private overlayChecked = false
  /** The stage every step's wafer is made in (see WaferStore.openStage), made at the first step that makes one. */
  private staging?: StoreStage
  private nspawnRootMade?: string
  /** Where this build mounts its steps (see privateMountpoint), made when first needed. */
  private runDir?: string
  private storeOnlyRoot?: boolean
  /**
   * The placeholders the last RUN had (in `staging`), and the stack they were made for: each
   * layer's name and data directory inode, nearest first.
   */
  private placeholders?: {below: string[]; dir: string}
  private readonly stages: Stage[] = []
  private stepLocksSwept = false
  private stepNumber = 0

  constructor(
    private readonly locations: Locations,
    private readonly store: WaferStore,
    private readonly context: string,
    private readonly file: Containerfile,
    private readonly options: BuildOptions,
  ) {
    this.escape = file.escape
    this.result = {name: options.name, steps: []}
  }

  steps(): Step[] {
    const total = this.file.instructions.length
    const steps: Step[] = this.file.instructions.map((instruction, index) => ({
      run: async (report) => {
        this.stepNumber = index + 1
        const outcome = await this.runInstruction(instruction, report)
        if (outcome) this.result.steps.push({instruction: instruction.text, ...outcome})
        const what = outcome?.cached ? ' (cached)' : ''
        return `[${index + 1}/${total}] ${instruction.text}${what}`
      },
      title: `[${index + 1}/${total}] ${instruction.text}`,
    }))
    steps.push({
      run: async () => this.finish(),
      title: `Point wafer ${this.options.name} at the result`,
    })
    return steps
  }

  private async runInstruction(
    instruction: Instruction,
    report: (line: string) => void,
  ): Promise<Omit<BuildStepResult, 'instruction'> | undefined> {
    const {keyword} = instruction
    if (keyword === 'FROM') return this.from(instruction, report)
    if (keyword === 'ARG' && this.current === undefined) {
      for (const [key, value] of this.argPairs(instruction.args, this.globalArgs)) {
        const given = this.buildArg(key) ?? value
        if (given !== undefined) this.globalArgs.set(key, given)
      }

      return {cached: true, wafer: null}
    }

    const stage = this.current as Stage
    switch (keyword) {
      case 'ADD':
      case 'COPY': {
        return this.copy(stage, instruction, report)
      }

      case 'RUN': {
        return this.run(stage, instruction, report)
      }

      default: {
        this.metadata(stage, instruction)
        stage.history.push({created_by: instruction.text, empty_layer: true})
        return {cached: stage.allCached, wafer: null}
      }
    }
  }

  /** The value `--build-arg KEY=VALUE` gave, if any. */
  private buildArg(key: string): string | undefined {
    return Object.hasOwn(this.options.buildArgs, key) ? this.options.buildArgs[key] : undefined
  }

  /** Variables for substitution: the stage's ARGs, overridden by its ENVs. */
  private vars(stage: Stage): Variables {
    const vars = new Map(stage.args)
    for (const entry of stage.config.Env ?? []) {
      const eq = entry.indexOf('=')
      if (eq > 0) vars.set(entry.slice(0, eq), entry.slice(eq + 1))
    }

    return vars
  }

  private argPairs(args: string, vars: Variables): Array<[string, string | undefined]> {
    return words(args, vars, this.escape).map((word) => {
      const eq = word.indexOf('=')
      return eq === -1 ? [word, undefined] : [word.slice(0, eq), word.slice(eq + 1)]
    })
  }

  private async from(
    instruction: Instruction,
    report: (line: string) => void,
  ): Promise<Omit<BuildStepResult, 'instruction'>> {
    const {rest} = splitFlags(instruction.args, ['platform'], 'FROM')
    const parts = words(rest, this.globalArgs, this.escape)
    if (parts.length !== 1 && !(parts.length === 3 && parts[1].toLowerCase() === 'as')) {
      throw new WafersError(`line ${instruction.line}: FROM takes an image and optionally AS NAME.`)
    }

    const [image] = parts
    const stageName = parts[2]?.toLowerCase()
    const host = {architecture: hostArchitecture(), os: 'linux'}
    let stage: Stage
    let pulled = false
    const earlier = this.stages.find((s) => s.name !== undefined && s.name === image.toLowerCase())
    if (image === 'scratch') {
      stage = {
        allCached: true,
        args: new Map(),
        config: {},
        history: [],
        identity: 'scratch',
        image: host,
        shell: DEFAULT_SHELL,
      }
    } else if (earlier) {
      stage = {...structuredClone({...earlier, args: new Map()}), allCached: true, args: new Map(), name: undefined}
    } else {
      const base = await this.baseWafer(image, instruction, report)
      const wafer = base.wafer
      pulled = base.pulled
      const chain = await traceAncestry(this.store, wafer)
      const meta = readMeta(this.store.dir(wafer), wafer).image
      stage = {
        allCached: true,
        args: new Map(),
        config: structuredClone(meta?.config ?? {}),
        history: structuredClone(meta?.history ?? []),
        identity: baseIdentity(this.store, chain),
        image: meta ? {architecture: meta.architecture, os: meta.os, variant: meta.variant} : host,
        shell: DEFAULT_SHELL,
        top: wafer,
      }
    }

    stage.name = stageName
    this.stages.push(stage)
    this.current = stage
    return {cached: !pulled, wafer: stage.top ?? null}
  }

  /**
   * The wafer FROM names: an existing wafer, or an image reference `wafers pull` takes, pulled
   * (into the wafer `wafers pull REF` would make) unless that wafer already holds it.
   */
  private async baseWafer(
    image: string,
    instruction: Instruction,
    report: (line: string) => void,
  ): Promise<{pulled: boolean; wafer: string}> {
    if (isValidName(image) && (await this.store.hasData(image))) {
      this.checkRealWafer(image, instruction)
      return {pulled: false, wafer: image}
    }

    const {pullImage} = await import('./pull.js')
    try {
      return await pullImage(this.locations, image, report, this.options.signal, this.options.registry)
    } catch (error) {
      if (!(error instanceof WafersError)) throw error
      const wafer = isValidName(image) ? `there is no wafer ${image} in ${this.store.root}, and ` : ''
      throw new WafersError(
        `line ${instruction.line}: FROM ${image}: ${wafer}${error.message.replace(/^./, (c) => (wafer ? c.toLowerCase() : c))}`,
        {
          exit: error.exit,
          suggestions: [
            'Name an existing wafer (see wafers list), an image to pull, a stage of this file, or scratch.',
          ],
        },
      )
    }
  }

  private state(stage: Stage): unknown {
    return {
      args: [...stage.args.entries()].sort(),
      env: stage.config.Env ?? [],
      shell: stage.shell,
      user: stage.config.User ?? '',
      workdir: stage.config.WorkingDir ?? '',
    }
  }

  /** The environment a RUN sees: the image's Env and the build args in scope that Env does not set. */
  private runEnv(stage: Stage): string[] {
    const env = [...(stage.config.Env ?? [])]
    const set = new Set(env.map((entry) => entry.split('=')[0]))
    for (const [key, value] of stage.args) if (!set.has(key)) env.push(`${key}=${value}`)
    return env
  }

  private async run(
    stage: Stage,
    instruction: Instruction,
    report: (line: string) => void,
  ): Promise<Omit<BuildStepResult, 'instruction'>> {
    const {rest} = splitFlags(instruction.args, [], 'RUN')
    const argv = execForm(rest) ?? [...stage.shell, rest]
    const spec: RunSpec = {argv, env: this.runEnv(stage), workdir: stage.config.WorkingDir}
    const step = this.stepNumber
    const runIn = async (root: string, overlay?: string[]) => {
      let exitCode: number
      try {
        exitCode = await runInRoot(root, spec, report, this.options.signal, overlay)
      } catch (error) {
        if (this.options.signal?.aborted) throw interrupted(step, instruction.text)
        throw error
      }

      if (this.options.signal?.aborted) throw interrupted(step, instruction.text)
      if (exitCode !== 0) throw runFailed(step, instruction.text, exitCode)
    }

    // Whether nspawn can mount the step itself: nothing to look up or make in the stack first (a
    // USER to find in its /etc/passwd, a WORKDIR it lacks).
    const alone = async (layers: string[]) =>
      (stage.config.User ?? '') === '' && (spec.workdir === undefined || (await isDirectoryIn(layers, spec.workdir)))
    return this.fileStep(
      stage,
      instruction,
      undefined,
      report,
      async (root) => {
        if (spec.workdir) await mkdirIn(root, spec.workdir)
        try {
          spec.user = runAs(root, stage.config.User)
        } catch (error) {
          if (error instanceof WafersError)
            throw new WafersError(`step ${step} (${instruction.text}): ${error.message}`)
          throw error
        }

        await runIn(root)
      },
      {alone, runIn},
    )
  }

  private async copy(
    stage: Stage,
    instruction: Instruction,
    report: (line: string) => void,
  ): Promise<Omit<BuildStepResult, 'instruction'>> {
    const add = instruction.keyword === 'ADD'
    const {flags, rest} = splitFlags(
      instruction.args,
      add ? ['chown', 'chmod'] : ['chown', 'chmod', 'from'],
      instruction.keyword,
    )
    const vars = this.vars(stage)
    // As Docker does, the flags' values take variables too.
    for (const flag of ['chown', 'chmod', 'from'] as const) {
      if (flags[flag] !== undefined) flags[flag] = words(flags[flag] as string, vars, this.escape).join(' ')
    }

    if (flags.from === '')
      throw new WafersError(`line ${instruction.line}: --from takes the name of a stage or a wafer.`)
    const exec = execForm(rest)
    const items = exec ? substituteEach(exec, vars, this.escape) : words(rest, vars, this.escape)
    if (items.length < 2)
      throw new WafersError(`line ${instruction.line}: ${instruction.keyword} takes SOURCE... DEST.`)
    const sources = items.slice(0, -1)
    const dest = items.at(-1) as string
    const remote = sources.find((source) => /^[a-z]+:\/\//i.test(source) || source.startsWith('git@'))
    if (remote)
      throw new WafersError(
        `line ${instruction.line}: ${instruction.keyword} of a URL (${remote}) is not supported; download it in a RUN step.`,
      )
    const chmod = parseChmod(flags.chmod)
    const target = containerPath(dest, stage.config.WorkingDir) + (dest.endsWith('/') ? '/' : '')

    let plan: CopyPlan | undefined
    let sourcesKey: string
    let fromStage: Stage | undefined
    let fromWafer: string | undefined
    if (flags.from === undefined) {
      this.ignore ??= IgnoreRules.load(this.context)
      plan = planCopy(this.context, sources, target, this.ignore, 'the build context')
      sourcesKey = await hashPlan(plan)
    } else {
      const name = flags.from.toLowerCase()
      fromStage = this.stages.find((s) => s.name === name) ?? this.stages[Number(flags.from)]
      if (fromStage === undefined) {
        if (!isValidName(flags.from) || !(await this.store.hasData(flags.from))) {
          throw new WafersError(`line ${instruction.line}: --from=${flags.from} names no earlier stage and no wafer.`)
        }

        this.checkRealWafer(flags.from, instruction)
        fromWafer = flags.from
        sourcesKey = `wafer:${baseIdentity(this.store, await traceAncestry(this.store, fromWafer))}`
      } else {
        sourcesKey = `stage:${fromStage.identity}`
      }
    }

    return this.fileStep(stage, instruction, sourcesKey, report, async (root, upper) => {
      const own = {...parseChown(root, flags.chown), chmod}
      if (plan) {
        const archives = add ? await archivesOf(plan) : new Set<string>()
        const copied = {...plan, entries: plan.entries.filter((entry) => !archives.has(entry.source))}
        if (copied.entries.length > 0) await copyInto(root, copied, target, own)
        for (const archive of archives) {
          report(`unpacking ${path.relative(this.context, archive)}`)
          // eslint-disable-next-line no-await-in-loop
          await unpackArchive(archive, root, target, path.join(path.dirname(upper), 'unpack'), own)
        }

        return
      }

      const top = fromStage?.top ?? fromWafer
      if (top === undefined) throw new WafersError(`line ${instruction.line}: stage ${flags.from} is empty.`)
      await this.withView(root, await traceAncestry(this.store, top), async (view) => {
        await copyInto(root, planCopy(view, sources, target, NO_IGNORE, `stage ${flags.from}`), target, own)
      })
    })
  }

  /**
   * Shows the stack `wafers` (top first) read-only inside `beside`'s parent while `fn` runs: one
   * wafer is its data itself, more are a lower-only overlay through the store's short links.
   */
  private async withView(beside: string, wafers: string[], fn: (view: string) => Promise<void>): Promise<void> {
    if (wafers.length === 1) return fn(this.store.dataDir(wafers[0]))
    const view = path.join(path.dirname(beside), 'from')
    await fs.mkdir(view)
    const ids = await linksFor(this.store, wafers)
    const {run} = await import('../host/run.js')
    await run(
      'mount',
      ['--no-canonicalize', '-t', 'overlay', '-o', `ro,lowerdir=${ids.join(':')}`, this.store.linksDir, view],
      {
        cwd: this.store.linksDir,
      },
    )
    try {
      await fn(view)
    } finally {
      await unmount(view, {held: true})
      await fs.rmdir(view)
    }
  }

  /**
   * A step that makes a wafer: reuses the cached one for its key, or makes it with `fill` running
   * on the stack of the stage's top plus the new wafer's staging data, mounted privately.
   */
  private async fileStep(
    stage: Stage,
    instruction: Instruction,
    sources: string | undefined,
    report: (line: string) => void,
    fill: (root: string, upper: string) => Promise<void>,
    direct?: DirectRun,
  ): Promise<Omit<BuildStepResult, 'instruction'>> {
    const key = stepKey({parent: stage.identity, sources, state: this.state(stage), text: instruction.text})
    const parent = stage.top
    let {cached, name} = await this.cachedStep(key, parent)
    if (!cached) {
      // Another build of the same step waits here for this one, and then finds it cached.
      const lock = await this.lockStep(key, instruction, report)
      try {
        ;({cached, name} = await this.cachedStep(key, parent))
        if (!cached) await this.makeStep(name, key, parent, instruction, report, fill, direct)
      } finally {
        lock.release()
      }
    }

    stage.top = name
    stage.identity = name
    stage.allCached &&= cached
    stage.history.push(historyEntry(instruction.text, this.store.dataDir(name)))
    return {cached: stage.allCached, wafer: name}
  }

  /**
   * The wafer of the step with `key` on `parent`, and whether it is cached: the newest generation
   * when it is that step's result (see isCached), else the name of the next generation to make
   * (always that one under --no-cache).
   */
  private async cachedStep(key: string, parent: string | undefined): Promise<{cached: boolean; name: string}> {
    const generation = await newestGeneration(this.store, key)
    const newest = stepWaferName(key, Math.max(generation, 0))
    if (!this.options.noCache && generation >= 0 && (await isCached(this.store, newest, key, parent))) {
      return {cached: true, name: newest}
    }

    return {cached: false, name: generation >= 0 ? stepWaferName(key, generation + 1) : newest}
  }

  /** Takes the lock of the step with `key` (see lockStep), saying so when another build holds it. */
  private async lockStep(key: string, instruction: Instruction, report: (line: string) => void): Promise<StepLock> {
    const step = this.stepNumber
    // The build's stage is what the claim names (alive while it is locked); making it swept the
    // stages of builds that died, so the claims naming those can go now.
    const within = await this.stagingDir()
    if (!this.stepLocksSwept) {
      removeAbandonedStepLocks(this.store.root)
      this.stepLocksSwept = true
    }

    try {
      return await lockStep(
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
          await this.onStack(name, below, data, report, fill, scratch, direct)
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

  /**
   * Mounts `below` under the staging `data` privately (inside the staging dir), runs `fill` there,
   * unmounts. For a RUN, the placeholders nspawn needs (see nspawnPlaceholders) lie between the
   * two, in a new directory in `scratch` (the build's stage, removed with it when the build ends).
   */
  private async onStack(
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
      const held = direct && scratch && !this.hasStackHooks() && this.onlyRootRenames() ? [scratch, stage] : []
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
            // eslint-disable-next-line no-await-in-loop
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
    const {hooks} = this.options
    // No store lock here (it costs a process per step): a `wafers rm` of a layer before the mount
    // makes the mount fail, and after it the mount makes rm refuse. The stage is named only through
    // the descriptor the store holds (`/proc/PID/fd/N`), never by its swappable name in the store, so
    // its upper, work and placeholder paths are absolute; the wafers below are short links.
    try {
      if (hooks) await fireHook(hooks, 'wafers:prestack', hookOptions)
      const lowers = [...(forNspawn ? [placeholders] : []), ...(await linksFor(this.store, below))]
      const options = `lowerdir=${lowers.join(':')},upperdir=${data},workdir=${path.join(stage, 'work')}`
      if (options.length > MAX_OPTIONS_LENGTH) {
        throw new WafersError(
          `the mount options of step ${name} take ${options.length} bytes, more than ${MAX_OPTIONS_LENGTH}.`,
        )
      }

      const {run} = await import('../host/run.js')
      await run('mount', ['--no-canonicalize', '-t', 'overlay', '-o', options, this.store.linksDir, mountpoint], {
        cwd: this.store.linksDir,
      })
    } catch (error) {
      await fs.rmdir(mountpoint).catch(() => {})
      for (const wafer of below) {
        // eslint-disable-next-line no-await-in-loop
        if (!(await this.store.hasData(wafer))) throw new WafersError(`wafer ${wafer} was removed meanwhile.`)
      }

      throw error
    }

    try {
      if (hooks) await fireHook(hooks, 'wafers:poststack', hookOptions)
      await fill(mountpoint, data)
    } finally {
      if (hooks)
        await fireHook(hooks, 'wafers:preunstack', {mountpoint, name}).catch((error) => report(String(error.message)))
      await unmount(mountpoint, {held: true})
      await fs.rmdir(mountpoint)
      if (hooks)
        await fireHook(hooks, 'wafers:postunstack', {mountpoint, name}).catch((error) => report(String(error.message)))
    }
  }

  private metadata(stage: Stage, instruction: Instruction): void {
    const {args, keyword, line} = instruction
    const vars = this.vars(stage)
    const config = stage.config
    const shellOrExec = (): string[] => execForm(args) ?? [...stage.shell, args]
    switch (keyword) {
      case 'ARG': {
        for (const [key, value] of this.argPairs(args, vars)) {
          const given = this.buildArg(key) ?? value ?? this.globalArgs.get(key)
          if (given === undefined) stage.args.delete(key)
          else stage.args.set(key, given)
        }

        break
      }

      case 'CMD': {
        config.Cmd = shellOrExec()
        stage.cmdSet = true
        break
      }

      case 'ENTRYPOINT': {
        config.Entrypoint = shellOrExec()
        // As Docker does: an ENTRYPOINT drops the CMD the base image had.
        if (!stage.cmdSet) delete config.Cmd
        break
      }

      case 'ENV': {
        const env = [...(config.Env ?? [])]
        for (const [key, value] of keyValues(args, vars, this.escape, true)) {
          const index = env.findIndex((entry) => entry.startsWith(`${key}=`))
          if (index === -1) env.push(`${key}=${value}`)
          else env[index] = `${key}=${value}`
          vars.set(key, value)
        }

        config.Env = env
        break
      }

      case 'EXPOSE': {
        config.ExposedPorts ??= {}
        for (const port of words(args, vars, this.escape)) {
          config.ExposedPorts[port.includes('/') ? port : `${port}/tcp`] = {}
        }

        break
      }

      case 'LABEL': {
        config.Labels ??= {}
        for (const [key, value] of keyValues(args, vars, this.escape)) config.Labels[key] = value
        break
      }

      case 'MAINTAINER': {
        break
      }

      case 'SHELL': {
        const shell = execForm(args)
        if (!shell || shell.length === 0)
          throw new WafersError(`line ${line}: SHELL takes a JSON array, such as ["/bin/bash", "-c"].`)
        stage.shell = shell
        break
      }

      case 'STOPSIGNAL': {
        config.StopSignal = words(args, vars, this.escape).join(' ')
        break
      }

      case 'USER': {
        config.User = words(args, vars, this.escape).join(' ')
        break
      }

      case 'VOLUME': {
        config.Volumes ??= {}
        for (const volume of execForm(args) ?? words(args, vars, this.escape)) config.Volumes[volume] = {}
        break
      }

      case 'WORKDIR': {
        config.WorkingDir = containerPath(words(args, vars, this.escape).join(' '), config.WorkingDir)
        break
      }

      default: {
        throw new WafersError(`line ${line}: ${keyword} is not supported by wafers build.`)
      }
    }
  }

  /**
   * Whether nobody but root can rename what is in the store (see onlyRootRenames): only then may
   * nspawn be given the stage by its name, since nobody else can swap that name under it.
   */
  private onlyRootRenames(): boolean {
    this.storeOnlyRoot ??= onlyRootRenames(this.store.root)
    return this.storeOnlyRoot
  }

  /** Whether a plugin listens to any stack event: it then sees each step mounted, as a stack is. */
  private hasStackHooks(): boolean {
    const {hooks} = this.options
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
      const staging = await this.stagingDir()
      // Another build's close() may remove the store's directory in between: make it again.
      for (let tries = 0; this.runDir === undefined; tries++) {
        // eslint-disable-next-line no-await-in-loop
        const dir = await this.privateMountsDir(true)
        const runDir = path.join(dir, path.basename(staging.dir))
        // eslint-disable-next-line no-await-in-loop
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
        // eslint-disable-next-line no-await-in-loop
        await fs.mkdir(made, {mode: 0o700}).catch((error: unknown) => {
          if (!isErrno(error, 'EEXIST')) throw asWafersError(error)
        })
      }

      const stat = lstatSync(made, {throwIfNoEntry: false})
      if (stat === undefined && !make) return dir
      if (!stat?.isDirectory() || stat.uid !== 0 || (stat.mode & 0o022) !== 0 || !onlyRootRenames(made)) {
        throw new WafersError(`${made} is not a directory only root may write to; wafers mounts build steps there.`, {
          suggestions: [`Remove it (it holds nothing wafers needs) and build again: rm -r ${made}`],
        })
      }
    }

    return dir
  }

  /** The build's stage in the store (see `staging`), made when first asked for. */
  private async stagingDir(): Promise<StoreStage> {
    if (this.staging === undefined) {
      // What killed builds left mounted goes first: making the stage sweeps their stages, and a
      // stage must not be deleted while a step of it is still mounted.
      const dir = await this.privateMountsDir(false)
      if (lstatSync(dir, {throwIfNoEntry: false})) await sweepMountpoints(this.store.root, dir)
      this.staging = await this.store.openStage(`build-${this.options.name}`)
    }

    return this.staging
  }

  /** Removes the build's stage and what is left in it (nspawn's placeholders), however the build ended. */
  async close(): Promise<void> {
    const {runDir, staging} = this
    this.staging = undefined
    this.runDir = undefined
    if (runDir) {
      await fs.rmdir(runDir).catch(() => {})
      await fs.rmdir(path.dirname(runDir)).catch(() => {}) // when no other build of the store uses it
    }
    if (staging) await discardStage(this.store.root, staging)
  }

  /** Makes NAME an empty wafer on the last stage's top, with the image config; re-points it when it exists. */
  private async finish(): Promise<string> {
    const stage = this.current as Stage
    const {name} = this.options
    const image: ImageMeta = {
      architecture: stage.image.architecture,
      config: stage.config,
      history: stage.history,
      os: stage.image.os,
      ref: `build:${this.context}`,
      ...(stage.image.variant ? {variant: stage.image.variant} : {}),
    }
    const parent = stage.top
    if (parent !== undefined && (await traceAncestry(this.store, parent)).includes(name)) {
      throw new WafersError(`wafer ${name} is below the result of the build itself; give the build another name.`)
    }

    if (!(await this.store.exists(name))) {
      try {
        await this.store.create(name, parent, {
          meta: {image},
          parentData: parent === undefined ? undefined : this.store.dataDir(parent),
          within: await this.stagingDir(),
        })
        return `Created wafer ${name}${parent ? ` on ${parent}` : ''}`
      } catch (error) {
        // Another build of NAME made it meanwhile: from here on, as if it had been there before.
        if (!(error instanceof WaferExistsError)) throw error
      }
    }

    const dir = this.store.dir(name)
    // Nothing to re-point: an unchanged rebuild is fine even when NAME holds files of its own.
    const same =
      readMeta(dir, name).image?.ref?.startsWith('build:') &&
      (await this.store.readParent(name)) === parent &&
      JSON.stringify(readMeta(dir, name).image) === JSON.stringify(image)
    if (same) return `Wafer ${name} is already on ${parent ?? 'nothing'}`
    await this.checkRepointable(name)
    await withLock(this.store.root, async () => {
      await this.checkRepointable(name)
      if (parent === undefined) await fs.rm(this.store.parentFile(name), {force: true})
      else writeFileAtomic(this.store.parentFile(name), `${parent}\n`)
      writeMeta(dir, {...readMeta(dir, name), image})
    })
    return `Pointed wafer ${name} at ${parent ?? 'nothing'}`
  }

  /** Refuses a wafer whose directory in the store is a symbolic link (it would lead out of the store). */
  private checkRealWafer(name: string, instruction: Instruction): void {
    const stat = lstatSync(this.store.dir(name), {throwIfNoEntry: false})
    if (stat?.isDirectory() !== true || lstatSync(this.store.dataDir(name)).isDirectory() !== true) {
      throw new WafersError(
        `line ${instruction.line}: wafer ${name} is not a directory in ${this.store.root} (a link?); it is not used.`,
      )
    }
  }

  /** Refuses to re-point NAME when it was not made by a build, holds files, or is stacked. */
  private async checkRepointable(name: string): Promise<void> {
    const meta = readMeta(this.store.dir(name), name)
    if (!meta.image?.ref?.startsWith('build:')) {
      throw new WafersError(`wafer ${name} exists and was not made by wafers build; it is left as it is.`, {
        suggestions: ['Give the build another name with -t.'],
      })
    }

    let entries: string[]
    try {
      entries = await fs.readdir(this.store.dataDir(name))
    } catch (error) {
      if (isErrno(error, 'ENOENT')) throw new WafersError(`wafer ${name} has no data directory.`)
      throw error
    }

    if (entries.length > 0) {
      throw new WafersError(
        `wafer ${name} holds changes of its own (${entries.slice(0, 3).join(', ')}${entries.length > 3 ? ', ...' : ''}); rebuilding would put them on another base, so it is left as it is.`,
        {suggestions: [`Give the build another name with -t, or remove ${name} first (wafers rm ${name}).`]},
      )
    }

    const children: string[] = []
    for (const wafer of await this.store.list()) {
      // eslint-disable-next-line no-await-in-loop
      if ((await this.store.readParent(wafer)) === name) children.push(wafer)
    }

    if (children.length > 0) {
      throw new WafersError(
        `wafer ${name} is the parent of ${children.join(', ')}; re-pointing it would move ${children.length === 1 ? 'that wafer' : 'those wafers'} onto the new base, so it is left as it is.`,
        {suggestions: ['Give the build another name with -t.']},
      )
    }

    const live = (await liveStacks(this.store)).filter((stack) => stack.top === name || stack.lowers.includes(name))
    if (live.length > 0) {
      throw new WafersError(
        `wafer ${name} is stacked at ${live.map((stack) => stack.mountpoint).join(', ')}; unstack it before rebuilding it.`,
      )
    }
  }
}

async function archivesOf(plan: CopyPlan): Promise<Set<string>> {
  const archives = new Set<string>()
  for (const entry of plan.entries) {
    // eslint-disable-next-line no-await-in-loop
    if (entry.named && entry.kind === 'file' && (await isArchive(entry.source))) archives.add(entry.source)
  }

  return archives
}

const FLAGS: Record<string, string[]> = {
  ADD: ['chown', 'chmod'],
  COPY: ['chown', 'chmod', 'from'],
  FROM: ['platform'],
  RUN: [],
}

/** Refuses, before anything runs, instructions and flags wafers build does not support, naming the line. */
function checkInstructions(file: Containerfile): void {
  for (const instruction of file.instructions) {
    const {keyword, line} = instruction
    if (keyword === 'HEALTHCHECK' || keyword === 'ONBUILD') {
      throw new WafersError(`line ${line}: ${keyword} is not supported by wafers build.`)
    }

    const allowed = FLAGS[keyword]
    if (allowed === undefined) continue
    try {
      splitFlags(instruction.args, allowed, keyword)
    } catch (error) {
      if (error instanceof WafersError) throw new WafersError(`line ${line}: ${error.message}`)
      throw error
    }
  }
}

/**
 * The history entry of a step that made a wafer: `empty_layer` when the step changed nothing, as
 * `wafers push` sends such a wafer as a history entry without a layer.
 */
function historyEntry(text: string, data: string): HistoryEntry {
  return readdirSync(data).length === 0 ? {created_by: text, empty_layer: true} : {created_by: text}
}

function interrupted(step: number, text: string): WafersError {
  return new WafersError(`interrupted during step ${step} (${text}); no wafer was made for it.`, {exit: 130})
}

/** The host's architecture as OCI names it. */
export function hostArchitecture(): string {
  const names: Record<string, string> = {
    arm: 'arm',
    arm64: 'arm64',
    ia32: '386',
    ppc64: 'ppc64le',
    s390x: 's390x',
    x64: 'amd64',
  }
  return names[os.arch()] ?? os.arch()
}
