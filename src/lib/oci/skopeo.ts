import {lstatSync, promises as fs, statSync} from 'node:fs'
import path from 'node:path'

import {WafersError, quote} from '../errors.js'
import {readStoreFile} from '../host/files.js'
import {ImageReference, describe} from './reference.js'

/** How to reach a registry: the flags pull and push share with skopeo and podman. */
export interface RegistryOptions {
  /** A containers-auth.json / Docker config.json with credentials (`--authfile FILE`). */
  authfile?: string
  /** `USER:PASS` (`--creds`). */
  creds?: string
  /** false for a registry on plain HTTP or with a certificate nobody signed (`--tls-verify=false`). */
  tlsVerify: boolean
  /** Trust: see TrustOptions. */
  trust?: TrustOptions
}

/** Which images a pull accepts and how a push signs, as skopeo's flags of the same names say. */
export interface TrustOptions {
  /** A containers-policy.json (`--policy FILE`); default: skopeo's, /etc/containers/policy.json. */
  policy?: string
  /** A registries.d directory (`--registries.d DIR`): where signatures are looked up and stored. */
  registriesD?: string
  /** A GPG key fingerprint to sign pushed images with (`--sign-by`). */
  signBy?: string
  /** A sigstore private key file to sign pushed images with (`--sign-by-sigstore-private-key`). */
  signBySigstorePrivateKey?: string
  /** The passphrase of the signing key (`--sign-passphrase-file`). */
  signPassphraseFile?: string
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

  const trust = options.trust ?? {}
  const files: Array<[string | undefined, string]> = [
    [trust.policy, '--policy'],
    [trust.signBySigstorePrivateKey, '--sign-by-sigstore-private-key'],
    [trust.signPassphraseFile, '--sign-passphrase-file'],
  ]
  for (const [file, flag] of files) {
    if (file !== undefined && !lstatSync(file, {throwIfNoEntry: false})?.isFile())
      throw new WafersError(`${flag} ${file}: there is no such file.`)
  }

  if (trust.registriesD !== undefined && !statSync(trust.registriesD, {throwIfNoEntry: false})?.isDirectory())
    throw new WafersError(`--registries.d ${trust.registriesD}: there is no such directory.`)
  if (trust.signBy !== undefined && !/^[\dA-Fa-f]{16,40}$/.test(trust.signBy))
    throw new WafersError(`--sign-by takes a GPG key fingerprint (hex digits), not ${quote(trust.signBy)}.`)
}

/**
 * Refuses a `--sign-by` key that GPG does not have as a secret key, before anything is pushed:
 * skopeo writes the image first and signs it after, so its own refusal comes with the image already sent.
 */
export async function checkSigningKey(options: RegistryOptions): Promise<void> {
  const sigstore = options.trust?.signBySigstorePrivateKey
  if (sigstore !== undefined) {
    const text = readStoreFile(sigstore, `the sigstore key ${sigstore}`, 64 * 1024) ?? ''
    if (!/^-----BEGIN ENCRYPTED (SIGSTORE|COSIGN) PRIVATE KEY-----$/m.test(text)) {
      throw new WafersError(
        `${sigstore} is not a sigstore private key (an ENCRYPTED SIGSTORE PRIVATE KEY PEM file); nothing was pushed.`,
      )
    }
  }

  const key = options.trust?.signBy
  if (key === undefined) return
  const {execa} = await import('execa')
  const listed = await execa('gpg', ['--batch', '--with-colons', '--list-secret-keys', key], {
    reject: false,
    stdin: 'ignore',
  })
  if (listed.code === 'ENOENT')
    throw new WafersError('--sign-by needs gpg, which is not installed; install the gpg package.')
  if (listed.failed) {
    throw new WafersError(
      `the GPG key ${key} is not a secret key in the keyring (${process.env.GNUPGHOME ?? '~/.gnupg'}), so push cannot sign with it; nothing was pushed.`,
    )
  }
}

/** skopeo's own flags (before the command) for trust: a policy to check sources by, where signatures are. */
function trustFlags(context: SkopeoContext, checkSource: boolean): string[] {
  const trust = context.options.trust ?? {}
  const flags: string[] = []
  // A push copies from wafers' own layout, made a moment ago: no policy speaks for it.
  if (!checkSource) flags.push('--insecure-policy')
  else if (trust.policy !== undefined) flags.push('--policy', trust.policy)
  if (trust.registriesD !== undefined) flags.push('--registries.d', trust.registriesD)
  return flags
}

/** skopeo copy's signing flags for a push. */
function signFlags(context: SkopeoContext): string[] {
  const trust = context.options.trust ?? {}
  const flags: string[] = []
  if (trust.signBy !== undefined) flags.push('--sign-by', trust.signBy)
  if (trust.signBySigstorePrivateKey !== undefined)
    flags.push('--sign-by-sigstore-private-key', trust.signBySigstorePrivateKey)
  if (trust.signPassphraseFile !== undefined) flags.push('--sign-passphrase-file', trust.signPassphraseFile)
  return flags
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
    // The policy is checked on the source whatever the destination; an OCI layout cannot hold signatures.
    [
      ...trustFlags(context, true),
      'copy',
      '--quiet',
      '--remove-signatures',
      ...registryFlags(context, 'src-'),
      source,
      `oci:${layout}:image`,
    ],
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
      ...trustFlags(context, false),
      'copy',
      '--quiet',
      '--digestfile',
      digestFile,
      ...signFlags(context),
      ...registryFlags(context, 'dest-'),
      `oci:${layout}:image`,
      ref.skopeo,
    ],
    ref,
    'pushing to',
  )
  return (await fs.readFile(digestFile, 'utf8')).trim()
}

/**
 * skopeo's stderr as one sentence of ours about `ref`: unreachable host, TLS, credentials wanted or
 * refused, access denied, repository or tag missing, another platform, a file that is not an
 * archive. Only skopeo's and the registry's own phrases count (`unauthorized`, `manifest unknown`,
 * `status code 401`...), never a bare number, and the names in `ref` are blanked out first, so a tag
 * `v401` or a repository `denied` is not mistaken for an answer. skopeo's own text is never shown
 * unless DEBUG is set.
 */
async function explain(context: SkopeoContext, stderr: string, ref: ImageReference): Promise<WafersError> {
  const raw = stderr
    .split('\n')
    .map((line) => /msg="((?:[^"\\]|\\.)*)"/.exec(line)?.[1]?.replaceAll('\\"', '"') ?? line)
    .filter((line) => line.trim() !== '')
    .join(' ')
  let text = raw
  const names = [ref.skopeo, ref.text, ref.path, ref.name, ref.repository, ref.tag, ref.digest]
  for (const name of names.filter((n): n is string => Boolean(n)).sort((x, y) => y.length - x.length))
    text = text.replaceAll(name, '\u0000')
  const image = describe(ref)
  const host = ref.host ?? ''
  const said = (pattern: RegExp) => pattern.test(text)
  const status = (code: number, phrase: string) =>
    new RegExp(`status code( from registry)?:? ${code}\\b|\\b${code} \\(?${phrase}\\b|\\bHTTP ${code}\\b`, 'i')
  const debug = process.env.DEBUG ? [`skopeo said: ${raw}`] : []
  const reach =
    /(connection refused|no such host|i\/o timeout|network is unreachable|no route to host|connection reset by peer|TLS handshake timeout)/.exec(
      text,
    )
  if (reach) return new WafersError(`cannot reach the registry ${host}: ${reach[1]}.`)
  const refused = trustRefusal(context, text, image)
  if (refused) return refused
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

  if (said(/\bunauthorized\b|authentication required/i) || said(status(401, 'Unauthorized'))) {
    const given = context.authfile !== undefined
    return new WafersError(
      given
        ? `the registry ${host} refused the credentials for ${image} (401 unauthorized).`
        : `the registry ${host} wants credentials for ${image} (401 unauthorized).`,
      {suggestions: ['Give them with --creds USER:PASS or --authfile FILE.']},
    )
  }

  if (said(/\bdenied: |requested access to the resource is denied/) || said(status(403, 'Forbidden')))
    return new WafersError(`the registry ${host} denied access to ${image} (403 forbidden).`)
  if (said(/name unknown|repository name not known/))
    return new WafersError(`repository ${ref.repository} not found on ${host}.`)
  if ((said(/manifest unknown/) || said(status(404, 'Not Found'))) && ref.transport === 'docker') {
    if (ref.digest) return new WafersError(`image ${image} not found: no manifest with that digest.`)
    const exists = await repositoryExists(context, ref)
    return new WafersError(
      exists
        ? `tag ${ref.tag} not found in ${host}/${ref.repository}.`
        : `repository ${ref.repository} not found on ${host}.`,
    )
  }

  if (said(/no image found in (manifest list|image index) for architecture/)) {
    return new WafersError(`${image} has no image for this machine's platform.`, {suggestions: debug})
  }

  if (said(/no such file or directory/) && ref.path) return new WafersError(`${ref.path} does not exist.`)
  if (ref.transport === 'docker-archive')
    return new WafersError(`${image} is not a Docker archive.`, {suggestions: debug})
  if (ref.transport === 'oci-archive')
    return new WafersError(`${image} is not an OCI archive, or holds no such image.`, {suggestions: debug})
  if (ref.transport === 'oci')
    return new WafersError(`${image} is not an OCI layout skopeo can read, or holds no such image.`, {
      suggestions: debug,
    })
  return new WafersError(`skopeo could not read or write ${image}; set DEBUG=1 to see what it said.`, {
    suggestions: debug,
  })
}

/**
 * The trust policy's refusal of an image, or a signing failure, in one sentence; undefined for
 * anything else. skopeo says "Source image rejected: REASON" for a policy refusal.
 */
function trustRefusal(context: SkopeoContext, text: string, image: string): WafersError | undefined {
  const trust = context.options.trust ?? {}
  const policy = `the trust policy ${trust.policy ?? '/etc/containers/policy.json'}`
  if (/Error loading trust policy|[Ii]nvalid policy/.test(text)) {
    return new WafersError(`${policy} cannot be read or is not a valid policy.`)
  }

  if (/Source image rejected|rejected by policy/.test(text)) {
    let why = 'it does not accept it'
    if (/signature was required, but no signature exists/.test(text))
      why = 'it requires a signature and the image has none'
    else if (/is rejected by policy/.test(text)) why = 'it rejects images from there'
    else if (/[Ss]ignature|GPG|key/.test(text)) why = 'no signature of the image is by a key it trusts'
    return new WafersError(`${policy} refuses ${image}: ${why}; nothing was pulled.`, {
      suggestions: [
        'Pull a signed image, or give another policy with --policy FILE (and --registries.d DIR for where signatures are).',
      ],
    })
  }

  if (trust.signBy !== undefined || trust.signBySigstorePrivateKey !== undefined) {
    if (/gpg|passphrase|private key|secret key|creating signature|signing/i.test(text)) {
      const key =
        trust.signBy === undefined
          ? `the sigstore key ${trust.signBySigstorePrivateKey}`
          : `the GPG key ${trust.signBy}`
      // skopeo sends the image first and signs it after.
      return new WafersError(
        `${image} was pushed but not signed: ${key} could not be used (a wrong or missing passphrase?).`,
        {suggestions: ['Give the passphrase with --sign-passphrase-file FILE and push again.']},
      )
    }
  }

  return undefined
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
