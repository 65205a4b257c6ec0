import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import type {SeedContext, Seeder} from 'wafers'

import {pickMirror, readAptSources} from './apt-sources.js'
import {findProgram, missingProgram} from './program.js'
import {RootfsCache} from './rootfs-cache.js'

/** Where downloaded .debs are kept between runs, so a second base of the same suite is quick. */
export const DEFAULT_CACHE_DIR = '/var/cache/wafers/debootstrap'

/** What the seeder's arguments ask for. */
export interface DebootstrapRequest {
  /** `--fresh`: run debootstrap even when an identical root file system is cached. */
  fresh: boolean
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
  const options = args.filter((arg) => arg.startsWith('-') && arg !== '--fresh')
  const words = args.filter((arg) => !arg.startsWith('-'))
  if (words.length > 2)
    throw new Error(
      `debootstrap takes a suite and a mirror, then options; got ${words.length} words (${words.join(' ')})`,
    )
  for (const option of options) {
    if (!/^--[a-z-]+(=.*)?$/.test(option)) {
      throw new Error(`debootstrap options must be written --name=value; got ${JSON.stringify(option)}`)
    }
  }

  return {fresh: args.includes('--fresh'), mirror: words[1], options, suite: words[0]}
}

/** The debootstrap command line for `target`: the cache, the options, then suite, target and mirror. */
export function debootstrapArgs(target: string, suite: string, mirror: string, options: string[]): string[] {
  const cache = options.some((option) => option.startsWith('--cache-dir=')) ? [] : [`--cache-dir=${DEFAULT_CACHE_DIR}`]
  return [...cache, ...options, suite, target, mirror]
}

/** The cache directory the options name, or the default. */
export function cacheDirOf(options: string[]): string {
  const given = options.findLast((option) => option.startsWith('--cache-dir='))
  return given ? given.slice('--cache-dir='.length) : DEFAULT_CACHE_DIR
}

/** The host's release codename (from os-release), the default suite on a Debian host. */
export async function hostSuite(osRelease = '/etc/os-release'): Promise<string> {
  const text = await fs.readFile(osRelease, 'utf8').catch(() => '')
  const codename = /^VERSION_CODENAME="?([a-z]+)"?$/m.exec(text)?.[1]
  const debian = /^ID="?debian"?$/m.test(text)
  return debian && codename ? codename : 'stable'
}

/**
 * Fetches the suite's Release file before debootstrap starts, with the wget debootstrap itself
 * uses (so proxies and the network path are the same), so that an unreachable mirror is reported
 * as a network failure and a missing suite as such, not as debootstrap's last words. Returns it:
 * it names the packages' versions, so it keys the root file system cache.
 */
export async function fetchRelease(
  run: SeedContext['run'],
  mirror: string,
  suite: string,
  timeoutSeconds = 20,
): Promise<string> {
  const release = `${mirror}/dists/${suite}/Release`
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-release-'))
  try {
    const file = path.join(dir, 'Release')
    const args = ['--no-verbose', `--timeout=${timeoutSeconds}`, '--tries=2', '--output-document', file, release]
    const {exitCode, tail} = await run('wget', args, {check: false, package: 'wget'})
    const said = tail
      .map((line) => line.trim())
      .filter((line) => line !== '')
      .join(' ')
      .replace(/^failed:\s*/i, '')
      .replace(/\.$/, '')
    // wget's exit codes: 4 network failure, 8 an error response from the server.
    if (exitCode === 4)
      throw new Error(
        `network failure: cannot reach the mirror ${mirror} (${said || 'no answer'}); check the network or give another mirror`,
      )
    if (exitCode === 8 && /\b404\b/.test(said))
      throw new Error(`the mirror ${mirror} has no suite ${suite} (${release} not found)`)
    if (exitCode !== 0)
      throw new Error(`fetching ${release} failed (wget exit code ${exitCode}): ${said || 'no output'}`)
    return await fs.readFile(file, 'utf8')
  } finally {
    await fs.rm(dir, {force: true, recursive: true})
  }
}

/** The files debootstrap copies from the host into the new root, naming the host and its resolver. */
export const HOST_IDENTITY = ['etc/hostname', 'etc/resolv.conf']

/**
 * Leaves `root` with an empty /etc/hostname and /etc/resolv.conf, as base images pulled from a
 * registry have them, for debootstrap copies the host's into every base: its name and DNS would
 * go into every container stacked on it and every image pushed from it. Empty regular files, not
 * none, so that systemd-nspawn's --resolv-conf=bind-host and a container engine have a file to
 * mount over. A symlink or anything else there is replaced, never followed.
 */
export async function forgetHostIdentity(root: string): Promise<void> {
  const etc = await fs.lstat(path.join(root, 'etc')).catch(() => undefined)
  if (!etc?.isDirectory()) return
  for (const file of HOST_IDENTITY.map((name) => path.join(root, name))) {
    const stat = await fs.lstat(file).catch(() => undefined)
    if (stat?.isFile() && stat.size === 0) continue
    if (stat !== undefined) await fs.rm(file, {force: true, recursive: stat.isDirectory()})
    // O_EXCL: never through a symlink planted meanwhile.
    await fs.writeFile(file, '', {flag: 'wx', mode: 0o644})
  }
}

/** Lines debootstrap prints when downloads fail. */
const DOWNLOAD_FAILURE =
  /Failed getting release file|Couldn't download|Failure while downloading|Could not resolve|Temporary failure in name resolution|Connection refused|Connection timed out/i

export const debootstrapSeeder: Seeder = {
  name: 'debootstrap',
  async seed(ctx: SeedContext) {
    const request = parseDebootstrapArgs(ctx.args)
    const program = await findProgram('debootstrap')
    if (program === undefined) throw missingProgram('debootstrap', 'debootstrap')
    const suite = request.suite ?? (await hostSuite())
    const mirror = (request.mirror ?? pickMirror(await readAptSources(), suite)).replace(/\/+$/, '')
    ctx.report(`debootstrap ${suite} from ${mirror}`)
    const release = await fetchRelease(ctx.run, mirror, suite)
    const cacheDir = cacheDirOf(request.options)
    await fs.mkdir(cacheDir, {recursive: true})
    const cache = new RootfsCache(path.join(cacheDir, 'rootfs'))
    const entry = cache.entry({mirror, options: request.options, suite}, release)
    // A root cached before the host's identity was dropped carries it: drop it after unpacking too.
    if (!request.fresh && (await cache.restore(ctx, entry.file))) {
      await forgetHostIdentity(ctx.dataDir)
      return
    }

    const args = debootstrapArgs(ctx.dataDir, suite, mirror, request.options)
    const result = await ctx.run(program, args, {check: false, package: 'debootstrap'})
    if (result.exitCode === 0) {
      await forgetHostIdentity(ctx.dataDir)
      await cache.store(ctx, entry, ctx.dataDir)
      return
    }

    const said = result.tail.filter((line) => line.trim() !== '')
    const failure = said.find((line) => DOWNLOAD_FAILURE.test(line))
    if (failure) throw new Error(`network failure while downloading from ${mirror}: ${failure.trim()}`)
    throw new Error(`debootstrap failed (exit code ${result.exitCode}): ${said.at(-1)?.trim() ?? 'no output'}`)
  },
  summary: "Debian or Ubuntu with debootstrap (mirror from the host's apt sources; cached in /var/cache/wafers).",
  usage: '[SUITE [MIRROR]] [--variant=minbase] [--include=PKG,...] [--fresh]',
}
