import {Command, Errors, Interfaces} from '@oclif/core'

import {WafersError, describeSystemError} from './lib/errors.js'
import type {HookRunner} from './lib/hooks.js'
import {SeedPlan, collectSeeders, findSeeder} from './lib/seed/seed.js'
import {BatchOutcome, batchError} from './lib/ui/progress.js'

/** oclif's FlagOutput and ArgOutput, which it does not export. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the shape oclif's parse() types its flags and args with
type Output = {[name: string]: any}

/**
 * The base of every wafers command: turns errors from src/lib into oclif's one-sentence errors
 * with hints, and any other error into its message alone (set DEBUG=* to see stacks).
 */
export abstract class WafersCommand extends Command {
  /**
   * Prints --json output colorized only on a terminal. Scripts get plain JSON.stringify: oclif's
   * colorizer tokenizes the whole text, which for `list --json` of 10,000 wafers costs hundreds
   * of milliseconds and tens of MiB that nobody sees.
   */
  logJson(json: unknown): void {
    if (process.stdout.isTTY) {
      super.logJson(json)
      return
    }

    process.stdout.write(`${JSON.stringify(json, null, 2)}\n`)
  }

  /**
   * Parses as oclif does, except that a missing argument is never read from stdin: oclif fills a
   * missing argument with whatever is piped in, so `echo kid | wafers rm --yes` removed kid, and a
   * command in a `while read` loop took the loop's input. A command that wants stdin says so (`-`).
   */
  protected async parse<F extends Output, B extends Output, A extends Output>(
    options?: Interfaces.Input<F, B, A>,
    argv?: string[],
  ): Promise<Interfaces.ParserOutput<F, B, A>> {
    const input = options ?? (this.ctor as unknown as Interfaces.Input<F, B, A>)
    const args = Object.fromEntries(
      Object.entries(input.args ?? {}).map(([name, arg]) => [name, {...arg, ignoreStdin: true}]),
    ) as typeof input.args
    // oclif spreads a command class, which copies its own statics only: keep the inherited ones it reads.
    const {baseFlags, enableJsonFlag, flags, strict} = input
    return super.parse({...input, args, baseFlags, enableJsonFlag, flags, strict}, argv)
  }

  protected async catch(error: Error & {exitCode?: number}): Promise<unknown> {
    if (error instanceof WafersError) {
      return super.catch(new Errors.CLIError(error.message, {exit: error.exit, suggestions: error.suggestions}))
    }

    if (error instanceof Errors.CLIError || error instanceof Errors.ExitError || process.env.DEBUG) {
      return super.catch(error)
    }

    // ENOTDIR, EROFS, ENOSPC, ... from anywhere: one sentence saying what and where, never errno text.
    const sentence = describeSystemError(error)
    if (sentence !== undefined) return super.catch(new Errors.CLIError(sentence, {exit: 1}))

    return super.catch(new Errors.CLIError(error.message, {exit: 1}))
  }

  /**
   * Fires wafers' hook events at every plugin through oclif. Errors are captured, never thrown,
   * so that the caller sees every plugin's failure and decides what to undo.
   */
  /**
   * Ends a batch with failures or an interruption: an error naming which item ended how, or with
   * --json only the exit code, so that the result array still prints.
   */
  protected endBatch(verb: string, outcomes: BatchOutcome[]): void {
    const error = batchError(verb, outcomes)
    if (error && this.jsonEnabled()) process.exitCode = error.exit
    else if (error) throw error
  }

  /** Runs `fn` holding the store lock on `dir`, saying on stderr when it has to wait for it. */
  protected async locked<T>(dir: string, fn: () => Promise<T>): Promise<T> {
    const {withLock} = await import('./lib/store/lock.js')
    return withLock(dir, fn, () => this.logToStderr(`waiting for another wafers command to finish with ${dir}...`))
  }

  protected hookRunner(): HookRunner {
    const {config} = this
    return {
      has: (event) => [...config.plugins.values()].some((plugin) => (plugin.hooks[event]?.length ?? 0) > 0),
      async run(event, options) {
        const outcome = await config.runHook(event, options, undefined, true)
        return {
          failures: outcome.failures.map(({error, plugin}) => ({error, plugin: plugin.name})),
          successes: outcome.successes.map(({plugin, result}) => ({plugin: plugin.name, result})),
        }
      },
    }
  }

  /** The seeder `--seed NAME` asks for, with its arguments; refuses unknown names, listing the known. */
  protected async seedPlan(name: string | undefined, args: string[]): Promise<SeedPlan | undefined> {
    if (name === undefined) {
      if (args.length > 0) throw new WafersError(`arguments after -- go to a seeder, but no --seed was given.`)
      return undefined
    }

    const {problems, seeders} = await collectSeeders(this.hookRunner())
    for (const problem of problems) this.warn(problem)
    return {args, entry: findSeeder(seeders, name)}
  }
}
