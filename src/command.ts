import {Command, Errors} from '@oclif/core'

import {WafersError} from './lib/errors.js'

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

  protected async catch(error: Error & {exitCode?: number}): Promise<unknown> {
    if (error instanceof WafersError) {
      return super.catch(new Errors.CLIError(error.message, {exit: error.exit, suggestions: error.suggestions}))
    }

    if (error instanceof Errors.CLIError || error instanceof Errors.ExitError || process.env.DEBUG) {
      return super.catch(error)
    }

    return super.catch(new Errors.CLIError(error.message, {exit: 1}))
  }
}
