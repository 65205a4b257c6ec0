/**
 * The dispatch of `wafers build` (moby's evaluator and dispatchers): the step loop over the
 * Containerfile's instructions, and one handler per instruction (FROM, RUN, COPY and ADD, and the
 * metadata ones), which keep the stages' state and hand steps that make a wafer to StepWafers.
 */
import {lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {type Platform, hostPlatform, parsePlatform, platformText} from '../oci/platform.js'
import type {Step} from '../steps.js'
import {traceAncestry} from '../store/ancestry.js'
import {type Healthcheck, type HistoryEntry, type ImageConfig, readMeta} from '../store/meta.js'
import {isValidName} from '../store/names.js'
import {Locations, WaferStore} from '../store/store.js'
import type {BuildOptions, BuildResult, BuildStepResult} from './build.js'
import {baseIdentity} from './cache.js'
import {IgnoreRules, NO_IGNORE, type CopyPlan, hashPlan, planCopy} from './context.js'
import {copyInto, isArchive, mkdirIn, parseChmod, unpackArchive} from './copy.js'
import {finishBuild} from './finish.js'
import {StepWafers} from './internals.js'
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
import {type Bind, type RunMount, openCache, prepareMountPoints, takeMounts} from './run-mounts.js'
import {isDirectoryIn, type RunSpec, runFailed, runInRoot} from './run.js'
import type {DirectRun} from './step-mount.js'
import {parseChown, runAs} from './users.js'

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
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** Instructions an ONBUILD trigger may not be (as Docker refuses them). */
const NOT_TRIGGERS = new Set(['FROM', 'MAINTAINER', 'ONBUILD'])

/** One build of a Containerfile: its instructions as steps, and the stages they build. */
export class Builder {
  readonly result: BuildResult
  private current?: Stage
  /** The ONBUILD triggers of the last FROM's base, still to run. */
  private triggers: Instruction[] = []
  private readonly escape: string
  private readonly globalArgs: Variables = new Map()
  private ignore?: IgnoreRules
  private readonly stages: Stage[] = []
  private stepNumber = 0
  private readonly wafers: StepWafers

  constructor(
    private readonly locations: Locations,
    private readonly store: WaferStore,
    private readonly context: string,
    private readonly file: Containerfile,
    private readonly options: BuildOptions,
  ) {
    this.escape = file.escape
    this.result = {name: options.name, steps: []}
    this.wafers = new StepWafers(store, options)
  }

  /** Removes the build's stage and what is left in it, however the build ended. */
  async close(): Promise<void> {
    await this.wafers.close()
  }

  steps(): Step[] {
    const total = this.file.instructions.length
    const steps: Step[] = this.file.instructions.map((instruction, index) => ({
      run: async (report) => {
        this.stepNumber = index + 1
        const outcome = await this.runInstruction(instruction, report)
        if (outcome) this.result.steps.push({instruction: instruction.text, ...outcome})
        let cached = outcome?.cached ?? false
        for (const trigger of this.triggers.splice(0)) {
          report(`running ONBUILD ${trigger.text}`)
          const ran = await this.runInstruction(trigger, report)
          if (ran) this.result.steps.push({instruction: `ONBUILD ${trigger.text}`, ...ran})
          cached &&= ran?.cached ?? true
        }

        const what = cached ? ' (cached)' : ''
        return `[${index + 1}/${total}] ${instruction.text}${what}`
      },
      title: `[${index + 1}/${total}] ${instruction.text}`,
    }))
    steps.push({
      run: async () =>
        finishBuild(this.store, this.options.name, this.context, this.current as Stage, async () =>
          this.wafers.stagingDir(),
        ),
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
    const {flags, rest} = splitFlags(instruction.args, ['platform'], 'FROM')
    const parts = words(rest, this.globalArgs, this.escape)
    const asked =
      flags.platform === undefined
        ? this.options.platform
        : parsePlatform(
            words(flags.platform, this.globalArgs, this.escape).join(''),
            `line ${instruction.line}: FROM --platform`,
          )
    if (parts.length !== 1 && !(parts.length === 3 && parts[1].toLowerCase() === 'as')) {
      throw new WafersError(`line ${instruction.line}: FROM takes an image and optionally AS NAME.`)
    }

    const [image] = parts
    const stageName = parts[2]?.toLowerCase()
    const host = hostPlatform()
    let stage: Stage
    let pulled = false
    const earlier = this.stages.find((s) => s.name !== undefined && s.name === image.toLowerCase())
    if (image === 'scratch') {
      stage = {
        allCached: true,
        args: new Map(),
        // As buildah and Docker do: a scratch stage still has a PATH for its RUNs and the image.
        config: {Env: [`PATH=${DEFAULT_PATH}`]},
        history: [],
        identity: asked ? `scratch:${platformText(asked)}` : 'scratch',
        image: asked ?? host,
        shell: DEFAULT_SHELL,
      }
    } else if (earlier) {
      stage = {...structuredClone({...earlier, args: new Map()}), allCached: true, args: new Map(), name: undefined}
    } else {
      const base = await this.baseWafer(image, instruction, report, asked)
      const wafer = base.wafer
      pulled = base.pulled
      this.wafers.found(wafer)
      // Read before the stage is held: rm or prune may take the base meanwhile (stagingDir checks).
      const {identity, meta} = await this.wafers.reading(wafer, async () => ({
        identity: baseIdentity(this.store, await traceAncestry(this.store, wafer)),
        meta: readMeta(this.store.dir(wafer), wafer).image,
      }))
      stage = {
        allCached: true,
        args: new Map(),
        config: structuredClone(meta?.config ?? {}),
        history: structuredClone(meta?.history ?? []),
        identity,
        image: meta ? {architecture: meta.architecture, os: meta.os, variant: meta.variant} : host,
        shell: meta?.config?.Shell ?? DEFAULT_SHELL,
        top: wafer,
      }
      // As Docker and buildah do: the base's ONBUILD triggers run right after FROM, and are not
      // passed on to this image.
      this.triggers = (stage.config.OnBuild ?? []).map((trigger) => parseTrigger(trigger, instruction))
      delete stage.config.OnBuild
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
    platform?: Platform,
  ): Promise<{pulled: boolean; wafer: string}> {
    if (isValidName(image) && (await this.store.hasData(image))) {
      await this.wafers.reading(image, () => checkRealWafer(this.store, image, instruction))
      return {pulled: false, wafer: image}
    }

    const {pullImage} = await import('./pull.js')
    try {
      return await pullImage(this.locations, image, report, this.options.signal, this.options.registry, platform)
    } catch (error) {
      if (!(error instanceof WafersError)) throw error
      const wafer = isValidName(image) ? `there is no wafer ${image} in ${this.store.root}, and ` : ''
      throw new WafersError(
        `line ${instruction.line}: FROM ${image}: ${wafer}${error.message.replace(/^./, (c) => (wafer ? c.toLowerCase() : c))}`,
        {
          exit: error.exit,
          // The pull's own hint (--tls-verify=false, --creds) says what to do; the generic one only
          // when it has none.
          suggestions:
            error.suggestions.length > 0
              ? error.suggestions
              : ['Name an existing wafer (see wafers list), an image to pull, a stage of this file, or scratch.'],
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
    const host = hostPlatform()
    if (stage.image.architecture !== host.architecture || stage.image.os !== host.os) {
      throw foreignRun(instruction, stage.image)
    }

    const taken = takeMounts(instruction.args, instruction.line, stage.config.WorkingDir)
    const {mounts} = taken
    const {rest} = splitFlags(taken.rest, [], 'RUN')
    const argv = execForm(rest) ?? [...stage.shell, heredocCommand(instruction, rest)]
    const sources = mounts.length === 0 ? undefined : JSON.stringify(await this.mountSources(mounts, instruction))
    const spec: RunSpec = {
      argv,
      env: this.runEnv(stage),
      network: this.options.network,
      workdir: stage.config.WorkingDir,
    }
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
      mounts.length === 0 &&
      (stage.config.User ?? '') === '' &&
      (spec.workdir === undefined || (await isDirectoryIn(layers, spec.workdir)))
    return this.fileStep(
      stage,
      instruction,
      sources,
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

        if (mounts.length === 0) await runIn(root)
        else
          await this.withMounts(root, mounts, instruction, async (binds) => {
            spec.binds = binds
            const cleanUp = await prepareMountPoints(root, binds)
            try {
              await runIn(root)
            } finally {
              await cleanUp()
            }
          })
      },
      {alone, runIn},
    )
  }

  /** What the RUN's mounts read, for its cache key: bind sources' contents, never a secret's. */
  private async mountSources(mounts: RunMount[], instruction: Instruction): Promise<string[]> {
    const keys: string[] = []
    // Another stage's or wafer's files are read from here on: the stage is held before (see StepWafers.found).
    if (mounts.some((mount) => mount.type === 'bind' && mount.from !== undefined)) await this.wafers.stagingDir()
    for (const mount of mounts) {
      if (mount.type !== 'bind') continue
      if (mount.from === undefined) {
        this.ignore ??= IgnoreRules.load(this.context)
        keys.push(await hashPlan(planCopy(this.context, [mount.source ?? '.'], '/', this.ignore, 'the build context')))
      } else {
        const top = await this.mountFrom(mount.from, instruction)
        keys.push(`${mount.source ?? '.'} of ${baseIdentity(this.store, await traceAncestry(this.store, top))}`)
      }
    }

    return keys
  }

  /** The top wafer of the stage or wafer a bind mount's from= names. */
  private async mountFrom(from: string, instruction: Instruction): Promise<string> {
    const stage = this.stages.find((s) => s.name === from.toLowerCase()) ?? this.stages[Number(from)]
    if (stage?.top !== undefined) return stage.top
    if (stage === undefined && isValidName(from) && (await this.store.hasData(from))) {
      checkRealWafer(this.store, from, instruction)
      return from
    }

    throw new WafersError(
      `line ${instruction.line}: RUN --mount from=${from} names no earlier stage with files and no wafer.`,
    )
  }

  /** Runs `run` with the host side of each mount ready: caches opened and locked, stages mounted. */
  private async withMounts(
    root: string,
    mounts: RunMount[],
    instruction: Instruction,
    run: (binds: Bind[]) => Promise<void>,
  ): Promise<void> {
    const binds: Bind[] = []
    const locks: Array<{release(): void}> = []
    const at = `line ${instruction.line}: RUN --mount`
    const go = async (index: number): Promise<void> => {
      if (index === mounts.length) return run(binds)
      const mount = mounts[index]
      if (mount.type === 'cache') {
        const cache = await openCache(this.store.root, mount.id ?? mount.target)
        locks.push(cache.lock)
        binds.push({host: cache.dir, readOnly: mount.readOnly, target: mount.target})
        return go(index + 1)
      }

      if (mount.type === 'secret') {
        const file = this.options.secrets?.[mount.id as string]
        if (file === undefined)
          throw new WafersError(`${at} type=secret,id=${mount.id}: no secret ${mount.id} was given.`, {
            suggestions: [`Give it with --secret id=${mount.id},src=FILE.`],
          })
        if (lstatSync(file, {throwIfNoEntry: false})?.isFile() !== true)
          throw new WafersError(`${at} type=secret,id=${mount.id}: ${file} is not a file.`)
        binds.push({host: file, readOnly: true, target: mount.target})
        return go(index + 1)
      }

      const bindFrom = async (tree: string, what: string) => {
        const host = resolveInRoot(tree, mount.source ?? '.')
        if (lstatSync(host, {throwIfNoEntry: false}) === undefined)
          throw new WafersError(`${at} source=${mount.source}: there is no ${mount.source} in ${what}.`)
        binds.push({host, readOnly: true, target: mount.target})
        return go(index + 1)
      }

      if (mount.from === undefined) return bindFrom(this.context, 'the build context')
      const top = await this.mountFrom(mount.from, instruction)
      return this.wafers.mounts.withView(root, await traceAncestry(this.store, top), async (view) =>
        bindFrom(view, `stage ${mount.from}`),
      )
    }

    try {
      await go(0)
    } finally {
      for (const lock of locks) lock.release()
    }
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
    const isUrl = (source: string) => /^https?:\/\//i.test(source)
    const remote = sources.find(
      (source) =>
        (/^[a-z]+:\/\//i.test(source) || source.startsWith('git@')) &&
        !(add && isUrl(source) && flags.from === undefined),
    )
    if (remote)
      throw new WafersError(
        `line ${instruction.line}: ${instruction.keyword} of ${remote} is not supported; ${add ? 'ADD downloads http and https URLs only' : 'COPY copies no URL; ADD downloads one'}.`,
      )
    const chmod = parseChmod(flags.chmod)
    const target = containerPath(dest, stage.config.WorkingDir) + (dest.endsWith('/') ? '/' : '')
    if (instruction.heredocs && sources.some((source) => source.startsWith('<<'))) {
      return this.copyHeredocs(stage, instruction, sources, target, {chmod, chown: flags.chown}, report)
    }

    if (add && sources.some((source) => isUrl(source))) {
      if (!sources.every((source) => isUrl(source)))
        throw new WafersError(`line ${instruction.line}: ADD takes URLs or files of the context, not both at once.`)
      if (sources.length > 1 && !target.endsWith('/'))
        throw new WafersError(
          `line ${instruction.line}: ADD of more than one URL needs a directory (ending in /) as DEST.`,
        )
      return this.addUrls(stage, instruction, sources, target, {chmod, chown: flags.chown}, report)
    }

    let plan: CopyPlan | undefined
    let sourcesKey: string
    let fromStage: Stage | undefined
    let fromWafer: string | undefined
    if (flags.from === undefined) {
      this.ignore ??= IgnoreRules.load(this.context)
      plan = planCopy(this.context, sources, target, this.ignore, 'the build context')
      sourcesKey = await hashPlan(plan)
    } else {
      // Another stage's or wafer's files are read from here on: the stage is held before (see StepWafers.found).
      await this.wafers.stagingDir()
      const name = flags.from.toLowerCase()
      fromStage = this.stages.find((s) => s.name === name) ?? this.stages[Number(flags.from)]
      if (fromStage === undefined) {
        if (isValidName(flags.from) && (await this.store.hasData(flags.from))) {
          checkRealWafer(this.store, flags.from, instruction)
          fromWafer = flags.from
        } else {
          // As buildah does: an image reference, pulled as FROM pulls it.
          fromWafer = await this.pulledForCopy(flags.from, instruction, report)
        }

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
          await unpackArchive(archive, root, target, path.join(path.dirname(upper), 'unpack'), own)
        }

        return
      }

      const top = fromStage?.top ?? fromWafer
      if (top === undefined) throw new WafersError(`line ${instruction.line}: stage ${flags.from} is empty.`)
      await this.wafers.mounts.withView(root, await traceAncestry(this.store, top), async (view) => {
        const keep = flags.chown === undefined
        await copyInto(root, planCopy(view, sources, target, NO_IGNORE, `stage ${flags.from}`), target, {...own, keep})
      })
    })
  }

  /**
   * ADD of URLs, as buildah does it: each downloaded (never unpacked) to DEST, or into DEST/ under
   * the URL's last path component, mode 0600 unless --chmod, with the server's Last-Modified as mtime.
   */
  private async addUrls(
    stage: Stage,
    instruction: Instruction,
    urls: string[],
    target: string,
    flags: {chmod?: number; chown?: string},
    report: (line: string) => void,
  ): Promise<Omit<BuildStepResult, 'instruction'>> {
    const {download} = await import('./download.js')
    const {mkdtemp, rm} = await import('node:fs/promises')
    const {tmpdir} = await import('node:os')
    const dir = await mkdtemp(path.join(tmpdir(), 'wafers-add-'))
    try {
      const entries: CopyPlan['entries'] = []
      const key: string[] = []
      for (const [index, url] of urls.entries()) {
        const name = path.posix.basename(new URL(url).pathname)
        if (target.endsWith('/') && name === '')
          throw new WafersError(
            `line ${instruction.line}: ${url} names no file to put in ${target}; give DEST a file name.`,
          )
        report(`downloading ${url}`)
        const file = path.join(dir, String(index))
        const got = await download(url, file, `line ${instruction.line}`, this.options.signal)
        const mtime = got.mtime ?? new Date()
        entries.push({
          from: url,
          kind: 'file',
          mode: 0o600,
          mtime,
          name,
          named: true,
          owner: {gid: 0, uid: 0},
          rel: '',
          source: file,
        })
        key.push(`${url} ${got.sha256} ${got.mtime?.getTime() ?? 'no mtime'}`)
      }

      const plan: CopyPlan = {destIsDir: target.endsWith('/'), entries}
      return await this.fileStep(stage, instruction, `url:${JSON.stringify(key)}`, report, async (root) => {
        const own = {...parseChown(root, flags.chown), chmod: flags.chmod}
        await copyInto(root, plan, target, own)
      })
    } finally {
      await rm(dir, {force: true, recursive: true})
    }
  }

  /** COPY or ADD of here-documents (BuildKit's `COPY <<EOF /file`): each a file of its body, 0644. */
  private async copyHeredocs(
    stage: Stage,
    instruction: Instruction,
    sources: string[],
    target: string,
    flags: {chmod?: number; chown?: string},
    report: (line: string) => void,
  ): Promise<Omit<BuildStepResult, 'instruction'>> {
    const {mkdtemp, rm, utimes, writeFile} = await import('node:fs/promises')
    const {tmpdir} = await import('node:os')
    const docs = new Map((instruction.heredocs ?? []).map((doc) => [doc.name, doc]))
    const names = sources.map((source) => {
      const doc = docs.get(source.replace(/^<<-?/, ''))
      if (!source.startsWith('<<') || doc === undefined)
        throw new WafersError(
          `line ${instruction.line}: ${instruction.keyword} takes here-documents or files of the context, not both at once.`,
        )
      return doc
    })
    const dir = await mkdtemp(path.join(tmpdir(), 'wafers-heredoc-'))
    try {
      const vars = this.vars(stage)
      for (const doc of names) {
        const file = path.join(dir, doc.name)
        await writeFile(file, doc.expand ? expandVariables(doc.body, vars) : doc.body, {mode: 0o644})
        // A fixed time: the same body is the same file, for the cache.
        await utimes(file, 0, 0)
      }

      const plan = planCopy(
        dir,
        names.map((doc) => doc.name),
        target,
        NO_IGNORE,
        'the here-documents',
      )
      return await this.fileStep(stage, instruction, await hashPlan(plan), report, async (root) => {
        await copyInto(root, plan, target, {...parseChown(root, flags.chown), chmod: flags.chmod})
      })
    } finally {
      await rm(dir, {force: true, recursive: true})
    }
  }

  /** The wafer holding image `image` that COPY --from names, pulled unless it is here already. */
  private async pulledForCopy(
    image: string,
    instruction: Instruction,
    report: (line: string) => void,
  ): Promise<string> {
    const {pullImage} = await import('./pull.js')
    try {
      const {wafer} = await pullImage(
        this.locations,
        image,
        report,
        this.options.signal,
        this.options.registry,
        this.options.platform,
      )
      return wafer
    } catch (error) {
      if (!(error instanceof WafersError)) throw error
      throw new WafersError(
        `line ${instruction.line}: --from=${image} names no earlier stage and no wafer, and as an image: ${error.message.replace(/^./, (c) => c.toLowerCase())}`,
        {
          exit: error.exit,
          suggestions:
            error.suggestions.length > 0
              ? error.suggestions
              : ['Name a stage of this file, a wafer or an image to pull.'],
        },
      )
    }
  }

  /** A step that makes a wafer (see StepWafers.make), its cache key taken from the stage's state. */
  private async fileStep(
    stage: Stage,
    instruction: Instruction,
    sources: string | undefined,
    report: (line: string) => void,
    fill: (root: string, upper: string) => Promise<void>,
    direct?: DirectRun,
  ): Promise<Omit<BuildStepResult, 'instruction'>> {
    return this.wafers.make(
      stage,
      {direct, fill, instruction, number: this.stepNumber, sources, state: this.state(stage)},
      report,
    )
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

      case 'HEALTHCHECK': {
        config.Healthcheck = parseHealthcheck(args, line)
        break
      }

      case 'ONBUILD': {
        const trigger = parseTrigger(args, instruction)
        config.OnBuild = [...(config.OnBuild ?? []), trigger.text]
        break
      }

      case 'LABEL': {
        config.Labels ??= {}
        // `LABEL key the rest` is the legacy form, as in Docker: the rest of the line is the value.
        for (const [key, value] of keyValues(args, vars, this.escape, true)) config.Labels[key] = value
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
        config.Shell = shell
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
}

/**
 * The shell command of a RUN with here-documents, as BuildKit runs it: a lone `<<EOF` is the
 * script itself; otherwise the line and the documents go to the shell as written, for it to read.
 */
function heredocCommand(instruction: Instruction, rest: string): string {
  const docs = instruction.heredocs
  if (docs === undefined) return rest
  const lone = /^<<-?(["']?)([A-Za-z_][A-Za-z0-9_]*)\1$/.exec(rest.trim())
  if (lone && docs.length === 1) return docs[0].body
  return [rest, ...instruction.text.split('\n').slice(1)].join('\n')
}

/** `$VAR` and `${VAR}` in a here-document's body replaced by their values (quotes left as they are). */
function expandVariables(body: string, vars: Variables): string {
  return body.replaceAll(/\\\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (match, braced, bare) =>
    match === '\\$' ? '$' : (vars.get(braced ?? bare) ?? ''),
  )
}

/** An ONBUILD trigger as an instruction of the line that brings it in; refuses what may not be one. */
function parseTrigger(text: string, at: Instruction): Instruction {
  let parsed: Instruction[]
  try {
    // A file of its own needs a FROM first; only what follows it is the trigger.
    parsed = parseContainerfile(`FROM scratch\n${text}`).instructions.slice(1)
  } catch (error) {
    if (error instanceof WafersError)
      throw new WafersError(`line ${at.line}: ONBUILD ${text}: ${error.message.replace(/^line \d+: /, '')}`)
    throw error
  }

  if (parsed.length !== 1) throw new WafersError(`line ${at.line}: ONBUILD takes one instruction.`)
  const [trigger] = parsed
  if (NOT_TRIGGERS.has(trigger.keyword))
    throw new WafersError(`line ${at.line}: ONBUILD ${trigger.keyword} is not allowed (as in Docker).`)
  return {...trigger, line: at.line}
}

const DURATION_UNITS: Record<string, number> = {h: 3.6e12, m: 6e10, ms: 1e6, ns: 1, s: 1e9, us: 1e3, µs: 1e3}

/** A Go duration (`30s`, `1m30s`, `500ms`) in nanoseconds, as Docker reads HEALTHCHECK's flags. */
function parseDuration(text: string, flag: string, line: number): number {
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)]
  if (text === '0') return 0
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text)
    throw new WafersError(
      `line ${line}: HEALTHCHECK --${flag} takes a duration such as 30s, not ${JSON.stringify(text)}.`,
    )
  return Math.round(parts.reduce((sum, [, n, unit]) => sum + Number(n) * DURATION_UNITS[unit], 0))
}

/** HEALTHCHECK's arguments as Docker's config keeps them. */
function parseHealthcheck(args: string, line: number): Healthcheck {
  if (/^none$/i.test(args.trim())) return {Test: ['NONE']}
  let parsed
  try {
    parsed = splitFlags(args, ['interval', 'timeout', 'start-period', 'retries'], 'HEALTHCHECK')
  } catch (error) {
    if (error instanceof WafersError) throw new WafersError(`line ${line}: ${error.message}`)
    throw error
  }

  const {flags, rest} = parsed
  const match = /^CMD\s+([\s\S]*)$/i.exec(rest.trim())
  if (!match) throw new WafersError(`line ${line}: HEALTHCHECK takes NONE, or [--interval=...] CMD COMMAND.`)
  const exec = execForm(match[1])
  const check: Healthcheck = {Test: exec ? ['CMD', ...exec] : ['CMD-SHELL', match[1]]}
  if (flags.interval !== undefined) check.Interval = parseDuration(flags.interval, 'interval', line)
  if (flags.timeout !== undefined) check.Timeout = parseDuration(flags.timeout, 'timeout', line)
  if (flags['start-period'] !== undefined)
    check.StartPeriod = parseDuration(flags['start-period'], 'start-period', line)
  if (flags.retries !== undefined) {
    if (!/^\d+$/.test(flags.retries))
      throw new WafersError(`line ${line}: HEALTHCHECK --retries takes a number, not ${JSON.stringify(flags.retries)}.`)
    check.Retries = Number(flags.retries)
  }

  return check
}

/** Refuses a wafer whose directory in the store is a symbolic link (it would lead out of the store). */
function checkRealWafer(store: WaferStore, name: string, instruction: Instruction): void {
  const stat = lstatSync(store.dir(name), {throwIfNoEntry: false})
  if (stat?.isDirectory() !== true || lstatSync(store.dataDir(name)).isDirectory() !== true) {
    throw new WafersError(
      `line ${instruction.line}: wafer ${name} is not a directory in ${store.root} (a link?); it is not used.`,
    )
  }
}

async function archivesOf(plan: CopyPlan): Promise<Set<string>> {
  const archives = new Set<string>()
  for (const entry of plan.entries) {
    if (entry.named && entry.kind === 'file' && (await isArchive(entry.source))) archives.add(entry.source)
  }

  return archives
}

/** The refusal of a RUN in a stage of another platform than this machine's. */
export function foreignRun(instruction: Instruction, platform: Platform): WafersError {
  return new WafersError(
    `line ${instruction.line}: RUN cannot run on this machine: its stage is for ${platformText(platform)}, and this machine is ${platformText(hostPlatform())}.`,
  )
}

function interrupted(step: number, text: string): WafersError {
  return new WafersError(`interrupted during step ${step} (${text}); no wafer was made for it.`, {exit: 130})
}
