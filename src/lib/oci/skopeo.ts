import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {ImageReference, describe} from './reference.js'

/** How to reach a registry: the flags pull and push share with skopeo and podman. */
export interface RegistryOptions {
  /** A containers-auth.json / Docker config.json with credentials (`--authfile FILE`). */
  authfile?: string
  /** `USER:PASS` (`--creds`). */
  creds?: string
  /** false for a registry on plain HTTP or with a certificate nobody signed (`--tls-verify=false`). */
  tlsVerify: boolean
}

/** What one skopeo run needs besides its arguments. */
export interface SkopeoContext {
  /** An auth file holding `--creds`, written by writeCredentials, if any. */
  authfile?: string
  options: RegistryOptions
  signal?: AbortSignal
}

/**
 * The context skopeo runs with for `ref`. `--creds USER:PASS` is written as an auth file (mode
 * 0600) for the registry `ref` names, in the private directory `dir`, so the password never shows
 * on a command line that `ps` lists.
 */
export async function skopeoContext(
  options: RegistryOptions,
  ref: ImageReference,
  dir: string,
  signal?: AbortSignal,
): Promise<SkopeoContext> {
  if (options.creds === undefined) return {authfile: options.authfile, options, signal}
  const auth = Buffer.from(options.creds).toString('base64')
  // Docker Hub answers under several names; the others are named as written.
  const hosts = ref.host === 'docker.io' ? ['docker.io', 'registry-1.docker.io', 'index.docker.io'] : [ref.host ?? '']
  const authfile = path.join(dir, 'auth.json')
  await fs.writeFile(authfile, JSON.stringify({auths: Object.fromEntries(hosts.map((host) => [host, {auth}]))}), {
    mode: 0o600,
  })
  return {authfile, options, signal}
}

/** Refuses registry options that cannot work, before anything is done. */
export function checkRegistryOptions(options: RegistryOptions): void {
  if (options.creds !== undefined && options.authfile !== undefined) {
    throw new WafersError('give either --creds or --authfile, not both.')
  }

  if (options.creds !== undefined && options.creds.indexOf(':') < 1) {
    throw new WafersError('--creds takes USER:PASS, with a colon between the user and the password.')
  }
}

/** The flags for one side of a copy (`src`, `dest`) or for inspect (no side). */
function registryFlags(context: SkopeoContext, side: '' | 'dest-' | 'src-'): string[] {
  const flags: string[] = []
  if (!context.options.tlsVerify) flags.push(`--${side}tls-verify=false`)
  if (context.authfile !== undefined) flags.push(`--${side}authfile`, context.authfile)
  return flags
}

/** Runs skopeo with an argument array; a failure becomes one sentence about `ref` (see explain). */
async function skopeo(context: SkopeoContext, args: string[], ref: ImageReference, verb: string): Promise<string> {
  const {execa} = await import('execa')
  const result = await execa('skopeo', args, {
    cancelSignal: context.signal,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    reject: false,
    stdin: 'ignore',
  })
  if (result.isCanceled || context.signal?.aborted)
    throw new WafersError(`interrupted while ${verb} ${describe(ref)}.`, {exit: 130})
  if (result.failed) {
    if (result.code === 'ENOENT') {
      throw new WafersError('skopeo is not installed; install the skopeo package.', {
        suggestions: ['apt-get install skopeo'],
      })
    }

    throw await explain(context, result.stderr || result.shortMessage || '', ref)
  }

  return result.stdout
}

/** The raw manifest or index REF names (`skopeo inspect --raw`). */
export async function inspectRaw(context: SkopeoContext, ref: ImageReference, skopeoRef = ref.skopeo): Promise<string> {
  return skopeo(context, ['inspect', '--raw', ...registryFlags(context, ''), skopeoRef], ref, 'reading')
}

/** The raw image config of REF (`skopeo inspect --config --raw`). */
export async function inspectConfig(
  context: SkopeoContext,
  ref: ImageReference,
  skopeoRef = ref.skopeo,
): Promise<string> {
  return skopeo(context, ['inspect', '--config', '--raw', ...registryFlags(context, ''), skopeoRef], ref, 'reading')
}

/** Copies the image at `source` into the OCI layout directory `layout` (tagged `image`). */
export async function copyToLayout(
  context: SkopeoContext,
  ref: ImageReference,
  source: string,
  layout: string,
): Promise<void> {
  await skopeo(
    context,
    ['copy', '--quiet', ...registryFlags(context, 'src-'), source, `oci:${layout}:image`],
    ref,
    'downloading',
  )
}

/** Copies the image in the OCI layout `layout` (tag `image`) to `ref`; returns the manifest digest written there. */
export async function copyFromLayout(
  context: SkopeoContext,
  layout: string,
  ref: ImageReference,
  digestFile: string,
): Promise<string> {
  await skopeo(
    context,
    [
      'copy',
      '--quiet',
      '--digestfile',
      digestFile,
      ...registryFlags(context, 'dest-'),
      `oci:${layout}:image`,
      ref.skopeo,
    ],
    ref,
    'pushing to',
  )
  return (await fs.readFile(digestFile, 'utf8')).trim()
}

/** skopeo's stderr as one sentence about `ref`: unreachable host, TLS, 401, 404, missing tag, another platform. */
async function explain(context: SkopeoContext, stderr: string, ref: ImageReference): Promise<WafersError> {
  const text = stderr
    .split('\n')
    .map((line) => /msg="((?:[^"\\]|\\.)*)"/.exec(line)?.[1]?.replaceAll('\\"', '"') ?? line)
    .filter((line) => line.trim() !== '')
    .join(' ')
  const image = describe(ref)
  const host = ref.host ?? ''
  const said = (pattern: RegExp) => pattern.test(text)
  const reach =
    /(connection refused|no such host|i\/o timeout|network is unreachable|no route to host|connection reset by peer|TLS handshake timeout)/.exec(
      text,
    )
  if (reach) return new WafersError(`cannot reach the registry ${host}: ${reach[1]}.`)
  if (said(/server gave HTTP response to HTTPS client/)) {
    return new WafersError(`the registry ${host} speaks plain HTTP, not HTTPS.`, {
      suggestions: ['Add --tls-verify=false to use it anyway.'],
    })
  }

  if (said(/x509:|certificate/)) {
    return new WafersError(`the TLS certificate of the registry ${host} is not trusted.`, {
      suggestions: ['Add --tls-verify=false to use it anyway.'],
    })
  }

  if (said(/unauthorized|authentication required|401/)) {
    const given = context.authfile !== undefined
    return new WafersError(
      given
        ? `the registry ${host} refused the credentials for ${image} (401 unauthorized).`
        : `the registry ${host} wants credentials for ${image} (401 unauthorized).`,
      {suggestions: ['Give them with --creds USER:PASS or --authfile FILE.']},
    )
  }

  if (said(/denied|403/)) return new WafersError(`the registry ${host} denied access to ${image} (403 forbidden).`)
  if (said(/name unknown|repository name not known/))
    return new WafersError(`repository ${ref.repository} not found on ${host}.`)
  if (said(/manifest unknown|not found|404/) && ref.transport === 'docker') {
    if (ref.digest) return new WafersError(`image ${image} not found: no manifest with that digest.`)
    const exists = await repositoryExists(context, ref)
    return new WafersError(
      exists
        ? `tag ${ref.tag} not found in ${host}/${ref.repository}.`
        : `repository ${ref.repository} not found on ${host}.`,
    )
  }

  if (said(/no image found in (manifest list|image index) for architecture/)) {
    return new WafersError(
      `${image} has no image for this machine's platform: ${text.replace(/^.*no image found/, 'no image found')}.`,
    )
  }

  if (said(/no such file or directory/) && ref.path) return new WafersError(`${ref.path} does not exist.`)
  const last = text.replace(/^Error (parsing image name|initializing source|copying image)[^:]*: /, '').trim()
  return new WafersError(`skopeo failed on ${image}: ${last.replace(/\.$/, '')}.`)
}

/** Whether the registry has the repository at all (a missing tag and a missing repository both say "manifest unknown"). */
async function repositoryExists(context: SkopeoContext, ref: ImageReference): Promise<boolean> {
  const {execa} = await import('execa')
  const result = await execa('skopeo', ['list-tags', ...registryFlags(context, ''), `docker://${ref.name}`], {
    reject: false,
    stdin: 'ignore',
  })
  return !result.failed
}
