import {WafersError} from './errors.js'
import type {Step} from './steps.js'

/** How a seeder runs a program: its output lines stream to the seeder's progress. */
export interface SeedRunOptions {
  /** When false, a non-zero exit is returned instead of thrown. Default true. */
  check?: boolean
  cwd?: string
  env?: NodeJS.ProcessEnv
  /** The package that provides the program, named in the error when it is missing. */
  package?: string
}

/** What a program run by a seeder did. */
export interface SeedRunResult {
  exitCode: number
  /** The last lines it printed (stdout and stderr interleaved), at most 50. */
  tail: string[]
}

/** What a seeder gets to fill a new wafer. */
export interface SeedContext {
  /** The arguments given after `--` on the command line. */
  args: string[]
  /** The absolute path of the new wafer's `data` directory (still hidden until it is complete). */
  dataDir: string
  /** Shows one line of progress under the seeder's task. */
  report(line: string): void
  /**
   * Runs a program with an argument array (never a shell), streaming its output to `report`.
   * Throws one sentence when it is missing or fails (unless `check` is false).
   */
  run(file: string, args: string[], options?: SeedRunOptions): Promise<SeedRunResult>
  /** Aborted when the user interrupts wafers (Ctrl-C): stop soon, the wafer will be removed. */
  signal: AbortSignal
  /**
   * Unpacks the tarball `file` (plain, gzip, bzip2, xz or zstd) into `dataDir` with wafers' own
   * tar reader, as pull and ADD unpack: owners, modes, times, links and attributes as the tar
   * says (overlayfs's own escaped, never acted on), every entry confined to `dataDir`, and a tar
   * that tar programs would read two ways refused in one sentence naming the entry.
   */
  unpack(file: string): Promise<{entries: number}>
  /** The new wafer's name. */
  wafer: string
}

/** A way to fill a new base wafer's data: what a `wafers:seeders` hook returns a list of. */
export interface Seeder {
  /** How `--seed` names it: letters, digits, "-", "_" and ".". */
  name: string
  /** Fills `ctx.dataDir`; a throw leaves no wafer behind. */
  seed(ctx: SeedContext): Promise<void>
  /** One line for `wafers seeders`. */
  summary: string
  /** What goes after `--`, for `wafers seeders` (say, "SUITE [MIRROR]"). */
  usage?: string
}

/** Options of `wafers:prestack` and `wafers:poststack`. */
export interface StackHookOptions {
  /**
   * The `data` directories of the stack, top first. At prestack the top one does not exist yet
   * when this `stack` creates the wafer: prestack runs before anything is created.
   */
  layers: string[]
  mountpoint: string
  /** The top wafer. */
  name: string
  /** The wafer names of the stack, top first. */
  wafers: string[]
}

/** Options of `wafers:preunstack` and `wafers:postunstack`. */
export interface UnstackHookOptions {
  mountpoint: string
  name: string
}

/**
 * Something a plugin may delete to free disk space (a seeder's download cache), as a
 * `wafers:prune` handler returns a list of. `wafers prune --dry-run` lists it without calling
 * `remove`. A plugin names only what no running seeder of its own uses.
 */
export interface PruneCandidate {
  /** What it is, in a few words ("debootstrap cache of bookworm"). */
  name: string
  /** The file or directory it is. */
  path: string
  /** Deletes it; a throw is reported and prune goes on with the rest. */
  remove(): Promise<void>
  /** Bytes it takes on disk. */
  size: number
}

/**
 * The events plugins implement, as oclif hook events (`oclif.hooks` in a plugin's package.json).
 * Each plugin's handlers run in parallel with other plugins'; a throw from a `pre` hook refuses the
 * step, a throw from a `post` hook undoes it.
 */
export interface WafersHooks {
  'wafers:poststack': {options: StackHookOptions; return: void}
  'wafers:postunstack': {options: UnstackHookOptions; return: void}
  'wafers:prestack': {options: StackHookOptions; return: void}
  'wafers:prune': {options: Record<string, never>; return: PruneCandidate[]}
  'wafers:preunstack': {options: UnstackHookOptions; return: void}
  'wafers:seeders': {options: Record<string, never>; return: Seeder[]}
}

export type WafersHookEvent = keyof WafersHooks

/** What every plugin's handlers of one event did. */
export interface HookOutcome<T> {
  failures: Array<{error: Error; plugin: string}>
  successes: Array<{plugin: string; result: T}>
}

/** Fires hook events at plugins (oclif's `config.runHook` in the CLI, anything in tests). */
export interface HookRunner {
  /** Whether any plugin handles `event`, so that steps nobody listens to are left out. */
  has(event: WafersHookEvent): boolean
  run<E extends WafersHookEvent>(
    event: E,
    options: WafersHooks[E]['options'],
  ): Promise<HookOutcome<WafersHooks[E]['return']>>
}

/**
 * Fires `event` and throws one sentence naming every plugin whose handler threw; `after` is added
 * to it (say, what was undone).
 */
export async function fireHook<E extends Exclude<WafersHookEvent, 'wafers:prune' | 'wafers:seeders'>>(
  runner: HookRunner,
  event: E,
  options: WafersHooks[E]['options'],
): Promise<void> {
  if (!runner.has(event)) return
  const outcome = await runner.run(event, options)
  if (outcome.failures.length > 0) throw new HookError(event, outcome.failures)
}

/** One or more plugins' handlers of an event threw. */
export class HookError extends WafersError {
  constructor(
    readonly event: WafersHookEvent,
    readonly failures: Array<{error: Error; plugin: string}>,
    after = '',
  ) {
    const what = failures
      .map(({error, plugin}) => `the ${event} hook of ${plugin} failed: ${oneLine(error)}`)
      .join('; ')
    super(`${what}${after || '.'}`)
  }
}

/**
 * Fires a `post` event; when a handler throws, calls `undo` and throws one sentence naming the
 * plugins and saying what was undone (`undone`), or that undoing failed too.
 */
export async function firePostHook<E extends 'wafers:poststack' | 'wafers:postunstack'>(
  runner: HookRunner,
  event: E,
  options: WafersHooks[E]['options'],
  undo: () => Promise<void>,
  undone: string,
): Promise<void> {
  try {
    await fireHook(runner, event, options)
  } catch (error) {
    if (!(error instanceof HookError)) throw error
    try {
      await undo()
    } catch (undoError) {
      throw new HookError(error.event, error.failures, `; undoing it failed too: ${oneLine(undoError)}.`)
    }

    throw new HookError(error.event, error.failures, `; ${undone}.`)
  }
}

/**
 * The steps that fire `wafers:prestack` (before anything is mounted or prepared for the mount)
 * and `wafers:poststack` (just after the mount; a failure calls `undo` to take the stack down
 * again). Steps nobody listens to are left out; both are skipped when `skip` says so (say, when it
 * was already stacked).
 */
export function stackHookSteps(
  runner: HookRunner | undefined,
  options: () => StackHookOptions,
  undo: () => Promise<void>,
  skip: () => string | undefined,
): {post: Step[]; pre: Step[]} {
  if (runner === undefined) return {post: [], pre: []}
  const pre: Step = {
    async run() {
      await fireHook(runner, 'wafers:prestack', options())
    },
    skip,
    title: 'Run the prestack hooks',
  }
  const post: Step = {
    // Ctrl-C after the mount still gets the poststack hooks (and their undo): all or nothing.
    always: true,
    async run() {
      await firePostHook(runner, 'wafers:poststack', options(), undo, 'the stack was unmounted again')
    },
    skip,
    title: 'Run the poststack hooks',
  }
  return {
    post: runner.has('wafers:poststack') ? [post] : [],
    pre: runner.has('wafers:prestack') ? [pre] : [],
  }
}

/**
 * Takes a stack down between its unstack hooks, as `unstack` and each build step do:
 * `wafers:preunstack` first (a failure stops it before anything is done), then `takeDown`, then
 * `wafers:postunstack`. What a postunstack failure does: `undo.remount` mounts the stack again and
 * the failure is thrown (`unstack`), or `undo.report` only reports it (a build step, whose stage
 * must come down whatever a plugin says; there a preunstack failure is reported too).
 */
export async function unstackWithHooks<T>(
  runner: HookRunner | undefined,
  options: WafersHooks['wafers:preunstack']['options'],
  takeDown: () => Promise<T>,
  undo: {remount: () => Promise<void>} | {report: (line: string) => void},
): Promise<T> {
  if (runner === undefined) return takeDown()
  const said = (error: unknown) => ('report' in undo ? undo.report(oneLine(error) + '.') : Promise.reject(error))
  await fireHook(runner, 'wafers:preunstack', options).catch(said)
  const result = await takeDown()
  await ('remount' in undo
    ? firePostHook(runner, 'wafers:postunstack', options, undo.remount, 'the stack was mounted again')
    : fireHook(runner, 'wafers:postunstack', options).catch(said))
  return result
}

/** The first line of an error's message, without a trailing period (we add our own). */
export function oneLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error)
  return (message.trim().split('\n')[0] || 'no message').replace(/\.$/, '')
}
