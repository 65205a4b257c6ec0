import {promises as fs, realpathSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno, quote} from '../errors.js'
import type {HookRunner, SeedContext, Seeder} from '../hooks.js'
import {oneLine} from '../hooks.js'
import {mountsUnder, readMountTable} from '../host/mounts.js'
import {NoSpaceError, runStreaming} from '../host/run.js'
import {isValidName} from '../store/names.js'
import {stagingLockFds} from '../store/staging.js'

/** A seeder and the plugin it comes from, as `wafers seeders` lists it. */
export interface SeederEntry {
  name: string
  plugin: string
  seeder: Seeder
  summary: string
  usage: string
}

/** The seeders every plugin offers, sorted by name, and why some plugins' offers were ignored. */
export async function collectSeeders(runner: HookRunner): Promise<{problems: string[]; seeders: SeederEntry[]}> {
  const outcome = await runner.run('wafers:seeders', {})
  const problems = outcome.failures.map(
    ({error, plugin}) => `the seeders of ${plugin} are unavailable: ${oneLine(error)}.`,
  )
  const seeders: SeederEntry[] = []
  for (const {plugin, result} of outcome.successes) {
    for (const seeder of Array.isArray(result) ? result : []) {
      if (typeof seeder?.name !== 'string' || !isValidName(seeder.name) || typeof seeder.seed !== 'function') {
        problems.push(`${plugin} offers a seeder without a valid name and seed function; it is ignored.`)
        continue
      }

      seeders.push({
        name: seeder.name,
        plugin,
        seeder,
        summary: String(seeder.summary ?? ''),
        usage: String(seeder.usage ?? ''),
      })
    }
  }

  seeders.sort((a, b) => a.name.localeCompare(b.name) || a.plugin.localeCompare(b.plugin))
  return {problems, seeders}
}

/** The seeder called `name`; refuses unknown and ambiguous names, listing the seeders there are. */
export function findSeeder(seeders: SeederEntry[], name: string): SeederEntry {
  const found = seeders.filter((entry) => entry.name === name)
  if (found.length === 1) return found[0]
  if (found.length > 1) {
    throw new WafersError(
      `seeder ${name} is offered by more than one plugin (${found.map((entry) => entry.plugin).join(', ')}).`,
      {
        suggestions: ['Uninstall one of them: wafers plugins uninstall PLUGIN'],
      },
    )
  }

  const names = [...new Set(seeders.map((entry) => entry.name))]
  const known = names.length === 0 ? 'there are none' : `there are ${names.join(', ')}`
  throw new WafersError(`there is no seeder ${quote(name)}; ${known}.`, {
    suggestions: ['See them all with: wafers seeders', 'Add more with: wafers plugins install PLUGIN'],
  })
}

/**
 * Splits a command line at the first `--`: what comes before is the command's own, what comes
 * after goes to the seeder untouched.
 */
export function splitSeederArgs(argv: string[]): {own: string[]; seederArgs: string[]} {
  const dash = argv.indexOf('--')
  if (dash === -1) return {own: argv, seederArgs: []}
  return {own: argv.slice(0, dash), seederArgs: argv.slice(dash + 1)}
}

/** What `--seed` asks for: a seeder and its arguments. */
export interface SeedPlan {
  args: string[]
  entry: SeederEntry
}

/**
 * Refuses a seed for anything but a new base wafer: seeders make whole root file systems, which
 * belong at the bottom of a stack.
 */
export function checkSeedTarget(
  plan: SeedPlan | undefined,
  name: string,
  exists: boolean,
  parent: string | undefined,
): void {
  if (plan === undefined) return
  if (exists) {
    throw new WafersError(`wafer ${name} already exists; --seed only fills a new wafer.`, {
      suggestions: [`Stack it without --seed, or pick a new name.`],
    })
  }

  if (parent !== undefined) {
    throw new WafersError(`--seed fills a new base wafer, but ${name} would have parent ${parent}.`, {
      suggestions: [`Seed a base first: wafers create BASE --seed ${plan.entry.name}, then wafers stack ${name} BASE`],
    })
  }
}

/** The title of the step that creates (and maybe seeds) a wafer. */
export function createTitle(name: string, parent: string | undefined, plan: SeedPlan | undefined): string {
  if (plan !== undefined) return `Create wafer ${name} and seed it with ${plan.entry.name}`
  return parent === undefined ? `Create wafer ${name}` : `Create wafer ${name} on ${parent}`
}

/**
 * Runs the planned seeder on a new wafer's (hidden) data directory, streaming its progress to
 * `report`. A failure is one sentence naming the seeder.
 */
export async function seed(
  plan: SeedPlan,
  wafer: string,
  dataDir: string,
  report: (line: string) => void,
): Promise<void> {
  // Ctrl-C or a kill stops the seeder's program and fails the seed, so the half-made wafer is
  // removed like after any other failure, instead of the process dying with it in place.
  const interrupt = new AbortController()
  const onSignal = (signal: NodeJS.Signals) => interrupt.abort(signal)
  for (const signal of ENDING_SIGNALS) process.on(signal, onSignal)
  const ctx: SeedContext = {
    args: [...plan.args],
    dataDir,
    report,
    run: (file, args, options) =>
      runStreaming(file, args, report, {...options, inherit: stagingLockFds()}, interrupt.signal),
    signal: interrupt.signal,
    async unpack(file) {
      const {unpackTarball} = await import('../layer/unpack.js')
      const {entries} = await unpackTarball(file, dataDir, {signal: interrupt.signal})
      return {entries}
    },
    wafer,
  }
  try {
    await plan.entry.seeder.seed(ctx)
  } catch (error) {
    if (isNoSpace(error)) {
      throw new WafersError(
        `no space is left on the file system of ${storeOf(dataDir)}: seeder ${plan.entry.name} could not fill wafer ${wafer}, which was not created.`,
      )
    }

    if (!interrupt.signal.aborted) {
      throw new WafersError(`seeder ${plan.entry.name} (${plan.entry.plugin}) failed: ${oneLine(error)}.`, {
        suggestions: error instanceof WafersError ? error.suggestions : [],
      })
    }
  } finally {
    for (const signal of ENDING_SIGNALS) process.off(signal, onSignal)
  }

  if (interrupt.signal.aborted) {
    const signal = String(interrupt.signal.reason)
    throw new WafersError(`seeder ${plan.entry.name} was interrupted by ${signal}; wafer ${wafer} was not created.`, {
      exit: signal === 'SIGINT' ? 130 : signal === 'SIGHUP' ? 129 : 143,
    })
  }

  // A wafer with a file system still mounted inside would show it to every stack: refuse it.
  const real = await fs.realpath(dataDir)
  const left = mountsUnder(await readMountTable(), real).map((entry) => entry.mountpoint)
  if (left.length > 0) {
    throw new WafersError(
      `seeder ${plan.entry.name} (${plan.entry.plugin}) left ${left.join(', ')} mounted inside the wafer.`,
    )
  }
}

/** The store a stage's data directory (reached through /proc/PID/fd/N) is in now. */
function storeOf(dataDir: string): string {
  try {
    return path.dirname(path.dirname(realpathSync(dataDir)))
  } catch {
    return path.dirname(path.dirname(dataDir))
  }
}

/** The signals that end wafers: each stops a seeder's programs and removes the half-made wafer. */
const ENDING_SIGNALS: NodeJS.Signals[] = ['SIGHUP', 'SIGINT', 'SIGTERM']

/** Whether `error` says a file system is full. */
function isNoSpace(error: unknown): boolean {
  return isErrno(error, 'ENOSPC') || error instanceof NoSpaceError
}
