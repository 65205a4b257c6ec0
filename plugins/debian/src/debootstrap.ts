import {promises as fs} from 'node:fs'

import type {SeedContext, Seeder} from 'wafers'

import {pickMirror, readAptSources} from './apt-sources.js'
import {findProgram, missingProgram} from './program.js'

/** Where downloaded .debs are kept between runs, so a second base of the same suite is quick. */
export const DEFAULT_CACHE_DIR = '/var/cache/wafers/debootstrap'

/** What the seeder's arguments ask for. */
export interface DebootstrapRequest {
  /** debootstrap options given as they are (`--variant=minbase`, `--include=...`, ...). */
  options: string[]
  mirror?: string
  suite?: string
}

/**
 * Reads `[SUITE [MIRROR]] [--OPTION=VALUE...]`: words are the suite then the mirror, options go
 * to debootstrap as they are.
 */
export function parseDebootstrapArgs(args: string[]): DebootstrapRequest {
  const options = args.filter((arg) => arg.startsWith('-'))
  const words = args.filter((arg) => !arg.startsWith('-'))
  if (words.length > 2) throw new Error(`debootstrap takes a suite and a mirror, then options; got ${words.length} words (${words.join(' ')})`)
  for (const option of options) {
    if (!/^--[a-z-]+(=.*)?$/.test(option)) {
      throw new Error(`debootstrap options must be written --name=value; got ${JSON.stringify(option)}`)
    }
  }

  return {mirror: words[1], options, suite: words[0]}
}

/** The debootstrap command line for `target`: the cache, the options, then suite, target and mirror. */
export function debootstrapArgs(target: string, suite: string, mirror: string, options: string[], cacheDir = DEFAULT_CACHE_DIR): string[] {
  const cache = options.some((option) => option.startsWith('--cache-dir=')) ? [] : [`--cache-dir=${cacheDir}`]
  return [...cache, ...options, suite, target, mirror]
}

/** The host's release codename (from os-release), the default suite on a Debian host. */
export async function hostSuite(osRelease = '/etc/os-release'): Promise<string> {
  const text = await fs.readFile(osRelease, 'utf8').catch(() => '')
  const codename = /^VERSION_CODENAME="?([a-z]+)"?$/m.exec(text)?.[1]
  const debian = /^ID="?debian"?$/m.test(text)
  return debian && codename ? codename : 'stable'
}

/**
 * Checks that `mirror` serves `suite` before debootstrap starts, so that an unreachable mirror is
 * reported as a network failure and a missing suite as such, not as debootstrap's last words.
 */
export async function checkMirror(mirror: string, suite: string, timeoutMs = 20_000): Promise<void> {
  const release = `${mirror}/dists/${suite}/Release`
  let response: Response
  try {
    response = await fetch(release, {method: 'HEAD', signal: AbortSignal.timeout(timeoutMs)})
  } catch (error) {
    const cause = (error as {cause?: {code?: string; message?: string}}).cause
    const why = cause?.code ?? cause?.message ?? (error as Error).message
    throw new Error(`network failure: cannot reach the mirror ${mirror} (${why}); check the network or give another mirror`)
  }

  if (response.status === 404) throw new Error(`the mirror ${mirror} has no suite ${suite} (${release} not found)`)
  if (!response.ok) throw new Error(`the mirror ${mirror} answered ${response.status} ${response.statusText} for ${release}`)
}

/** Lines debootstrap prints when downloads fail. */
const DOWNLOAD_FAILURE = /Failed getting release file|Couldn't download|Failure while downloading|Could not resolve|Temporary failure in name resolution|Connection refused|Connection timed out/i

export const debootstrapSeeder: Seeder = {
  name: 'debootstrap',
  async seed(ctx: SeedContext) {
    const request = parseDebootstrapArgs(ctx.args)
    const program = await findProgram('debootstrap')
    if (program === undefined) throw missingProgram('debootstrap', 'debootstrap')
    const suite = request.suite ?? (await hostSuite())
    const mirror = (request.mirror ?? pickMirror(await readAptSources(), suite)).replace(/\/+$/, '')
    ctx.report(`debootstrap ${suite} from ${mirror}`)
    await checkMirror(mirror, suite)
    await fs.mkdir(DEFAULT_CACHE_DIR, {recursive: true})
    const args = debootstrapArgs(ctx.dataDir, suite, mirror, request.options)
    const result = await ctx.run(program, args, {check: false, package: 'debootstrap'})
    if (result.exitCode === 0) return
    const said = result.tail.filter((line) => line.trim() !== '')
    const failure = said.find((line) => DOWNLOAD_FAILURE.test(line))
    if (failure) throw new Error(`network failure while downloading from ${mirror}: ${failure.trim()}`)
    throw new Error(`debootstrap failed (exit code ${result.exitCode}): ${said.at(-1)?.trim() ?? 'no output'}`)
  },
  summary: "Debian or Ubuntu with debootstrap (mirror from the host's apt sources; .debs cached in /var/cache/wafers).",
  usage: '[SUITE [MIRROR]] [--variant=minbase] [--include=PKG,...]',
}
