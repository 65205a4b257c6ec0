/**
 * `wafers build`, from outside: what it is asked (BuildOptions) and what it did (BuildResult), the
 * Containerfile it reads, and the checks that run before anything is made. The build itself is
 * Builder's (evaluate.ts).
 */
import {lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError, quote} from '../errors.js'
import {readStoreFile} from '../host/files.js'
import type {HookRunner} from '../hooks.js'
import {type Platform, hostPlatform, parsePlatform} from '../oci/platform.js'
import type {RegistryOptions} from '../oci/skopeo.js'
import type {Step} from '../steps.js'
import {isValidName} from '../store/names.js'
import {Locations, WaferStore} from '../store/store.js'
import {checkRoot} from '../host/system.js'
import {Builder, foreignRun} from './evaluate.js'
import {checkBuildTarget} from './finish.js'
import {type Containerfile, type Instruction, parseContainerfile, splitFlags} from './parser.js'
import {resolveInRoot} from './paths.js'
import type {RunNetwork} from './run.js'
import {takeMounts} from './run-mounts.js'

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
  /** `--network`: every RUN's network, the host's (the default) or loopback only (`none`). */
  network?: RunNetwork
  /** The wafer the build ends in. */
  name: string
  /** Rebuild every step, whatever the cache holds. */
  noCache?: boolean
  /** `--platform OS/ARCH[/VARIANT]`: the platform of every stage FROM does not give one. */
  platform?: Platform
  /** How FROM pulls images: `--tls-verify`, `--creds`, `--authfile`. */
  registry?: RegistryOptions
  /** `--secret id=ID,src=FILE`: the files RUN --mount=type=secret,id=ID binds in, read-only. */
  secrets?: Record<string, string>
  /** Aborted on Ctrl-C: the RUN under way is stopped, nothing new starts. */
  signal?: AbortSignal
  /** `--target STAGE`: the build ends with that stage; what follows it is not built. */
  target?: string
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
  const {containerfile: whole} = readContainerfile(context, options.file)
  const containerfile = options.target === undefined ? whole : upToStage(whole, options.target)
  checkInstructions(containerfile, options.platform, options.secrets ?? {})
  const store = new WaferStore(locations.wafers)
  checkBuildTarget(store, options.name)
  const builder = new Builder(locations, store, context, containerfile, options)
  return {close: async () => builder.close(), result: builder.result, steps: builder.steps()}
}

/** The instructions up to the end of stage `target` (FROM ... AS TARGET); refuses a name no stage has. */
function upToStage(file: Containerfile, target: string): Containerfile {
  const name = target.toLowerCase()
  const isFrom = (instruction: Instruction) => instruction.keyword === 'FROM'
  const start = file.instructions.findIndex(
    (instruction) => isFrom(instruction) && /\s[aA][sS]\s+(\S+)\s*$/.exec(instruction.args)?.[1].toLowerCase() === name,
  )
  if (start === -1) {
    throw new WafersError(`--target ${target} names no stage of the Containerfile (FROM ... AS ${target}).`, {exit: 2})
  }

  const next = file.instructions.findIndex((instruction, index) => index > start && isFrom(instruction))
  return {...file, instructions: next === -1 ? file.instructions : file.instructions.slice(0, next)}
}

const FLAGS: Record<string, string[]> = {
  ADD: ['chown', 'chmod'],
  COPY: ['chown', 'chmod', 'from'],
  FROM: ['platform'],
  RUN: ['mount'],
}

/** Refuses, before anything runs, instructions and flags wafers build does not support, naming the line. */
function checkInstructions(file: Containerfile, platform: Platform | undefined, secrets: Record<string, string>): void {
  // The platform each stage asks for, when it is written out: a RUN in a stage of another
  // platform than this machine's cannot run, so it is refused before any image is pulled for it.
  let asked = platform
  const host = hostPlatform()
  for (const instruction of file.instructions) {
    const {keyword, line} = instruction
    if (keyword === 'FROM') {
      const given = /^--platform=(\S+)/.exec(instruction.args)?.[1]
      asked =
        given === undefined
          ? platform
          : given.includes('$')
            ? undefined
            : parsePlatform(given, `line ${line}: FROM --platform`)
    }

    if (keyword === 'RUN' && asked && (asked.architecture !== host.architecture || asked.os !== host.os)) {
      throw foreignRun(instruction, asked)
    }

    // RUN --mount's own syntax too, before anything runs (its mounts are parsed again in the step).
    if (keyword === 'RUN') {
      for (const mount of takeMounts(instruction.args, line).mounts) {
        if (mount.type === 'secret' && !Object.hasOwn(secrets, mount.id as string))
          throw new WafersError(
            `line ${line}: RUN --mount type=secret,id=${mount.id}: no secret ${mount.id} was given.`,
            {
              suggestions: [`Give it with --secret id=${mount.id},src=FILE.`],
            },
          )
      }
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
