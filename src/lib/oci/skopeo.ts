import {closeSync, promises as fs, fstatSync, lstatSync, openSync, readFileSync, statSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno, quote} from '../errors.js'
import {readStoreFile} from '../host/files.js'
import {diesWithUs, findOnPath, systemProgram, withUs} from '../host/run.js'
import type {Descriptor} from './image.js'
import {MAX_JSON_BLOB} from './layout.js'
import {ImageReference, describe} from './reference.js'

/** How to reach a registry: the flags pull and push share with skopeo and podman. */
export interface RegistryOptions {
  /** A containers-auth.json / Docker config.json with credentials (`--authfile FILE`). */
  authfile?: string
  /** `USER:PASS` (`--creds`). */
  creds?: string
  /** The longest one skopeo run may take, in ms (`--command-timeout`); none when undefined. */
  commandTimeout?: number
  /** How long, in ms, the other side may move less than 1 KiB before wafers gives up (`--idle-timeout`); 60 s when undefined. */
  idleTimeout?: number
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
  /** A private directory for skopeo's temporary files (its TMPDIR), removed with the pull or push. */
  dir: string
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
  if (options.creds === undefined) return {authfile: options.authfile, dir, options, signal}
  const auth = Buffer.from(options.creds).toString('base64')
  // Docker Hub answers under several names; the others are named as written.
  const hosts = ref.host === 'docker.io' ? ['docker.io', 'registry-1.docker.io', 'index.docker.io'] : [ref.host ?? '']
  const authfile = path.join(dir, 'auth.json')
  await fs.writeFile(authfile, JSON.stringify({auths: Object.fromEntries(hosts.map((host) => [host, {auth}]))}), {
    mode: 0o600,
  })
  return {authfile, dir, options, signal}
}

/** Loads what running skopeo takes (execa) ahead of its first run: a push does so while find walks a wafer. */
export async function readySkopeo(): Promise<void> {
  await import('execa')
}

/** O_PATH (Linux): opens a name without opening the file, so a FIFO never blocks and a device is never touched. */
const O_PATH = 0o10000000

/**
 * Refuses an `oci-archive:` or `docker-archive:` path that is not a regular file (a FIFO would
 * hang skopeo for ever, a device be read or written without end), looking at it through O_PATH,
 * which never opens the file itself. The path is the user's own: a symlink there is followed.
 * With `mayBeMissing` (a push writes the archive), a path that does not exist yet passes.
 */
export function checkArchivePath(ref: ImageReference, mayBeMissing = false): void {
  if (ref.transport !== 'oci-archive' && ref.transport !== 'docker-archive') return
  let fd: number
  try {
    fd = openSync(ref.path!, O_PATH)
  } catch (error) {
    if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) {
      if (mayBeMissing) return
      throw new WafersError(`${ref.path} does not exist.`)
    }

    throw new WafersError(`${ref.path} cannot be opened (${(error as NodeJS.ErrnoException).code}).`)
  }

  try {
    const stat = fstatSync(fd)
    if (stat.isDirectory()) throw new WafersError(`${ref.path} is a directory, not an archive file.`)
    if (!stat.isFile()) {
      const kind = stat.isFIFO() ? 'a FIFO' : stat.isSocket() ? 'a socket' : 'a device'
      throw new WafersError(
        `${ref.path} is ${kind}, not a regular file; wafers reads and writes archives only as regular files.`,
      )
    }
  } finally {
    closeSync(fd)
  }
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
  const gpg = withUs('gpg', ['--batch', '--with-colons', '--list-secret-keys', key])
  const listed = await execa(gpg.file, gpg.args, {
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

/** skopeo's registry arguments for one side of a copy (`src`, `dest`) or for inspect (no side). */
function skopeoRegistryArgs(context: SkopeoContext, side: '' | 'dest-' | 'src-'): string[] {
  const flags: string[] = []
  if (!context.options.tlsVerify) flags.push(`--${side}tls-verify=false`)
  if (context.authfile !== undefined) flags.push(`--${side}authfile`, context.authfile)
  return flags
}

/** The bounds of one skopeo run, besides the time-outs of its context. */
interface Bounds {
  /** The image's layers, to name the one a failure is about ("layer 2 of 3"). */
  layers?: Descriptor[]
  /** The layers not (yet) copied whole: after a failure, the one it is about is among them. */
  pending?: () => Descriptor[]
  /** The largest file skopeo may write (RLIMIT_FSIZE): a blob that grows past it is cut off by the kernel. */
  maxFile?: number
  /** The most bytes skopeo may print (a manifest or config). */
  maxOutput?: number
  /** The most bytes skopeo may read in all, from the network and files: an endless answer is cut off. */
  maxRead?: number
  /**
   * Hold the run to MIN_RATE: layers downloaded from a registry. Not questions (a few small
   * answers) nor pushes (a registry may think a while over an upload), which the idle bound covers.
   */
  minRate?: boolean
  /** Fail without explaining (a question whose failure is an answer). */
  plain?: boolean
  /** What skopeo prints, for a sentence about an answer too large ("the manifest of IMAGE"). */
  what?: string
}

/** Less than this many bytes moved in --idle-timeout is no progress (a registry answering a byte a second is stuck). */
const IDLE_BYTES = 1024

/**
 * The slowest transfer wafers waits for: less than this many bytes a second over a whole
 * --idle-timeout window is a trickle, not a download (a registry sending 100 bytes a second keeps
 * clear of the idle bound, and would take days over one layer). A modem moves seven times more.
 */
const MIN_RATE = 1024

/** The idle time-out when none is given. */
export const DEFAULT_IDLE_TIMEOUT = 60_000

/**
 * Runs skopeo with an argument array and returns exactly the bytes it printed (a manifest's final
 * newline is part of what its digest covers). The run dies with wafers (diesWithUs), keeps its
 * temporary files in the context's private directory, and is stopped when it moves less than 1 KiB
 * in the idle time-out, outlasts the command time-out, or reads or writes more than `bounds`
 * allow. A failure or a bound hit becomes one sentence about `ref` (see explain).
 */
async function skopeo(
  context: SkopeoContext,
  args: string[],
  ref: ImageReference,
  verb: string,
  bounds: Bounds = {},
): Promise<Buffer> {
  const {execa} = await import('execa')
  const program = findOnPath('skopeo')
  if (program === undefined) {
    throw new WafersError('skopeo is not installed; install the skopeo package.', {
      suggestions: ['apt-get install skopeo'],
    })
  }

  const {commandTimeout} = context.options
  const idleTimeout = context.options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT
  const argv = [...(commandTimeout === undefined ? [] : [`--command-timeout=${commandTimeout}ms`]), ...args]
  const limit = bounds.maxFile === undefined ? [] : [systemProgram('prlimit'), `--fsize=${bounds.maxFile}`, '--']
  const command = diesWithUs(program, argv, limit)
  const child = execa(command.file, command.args, {
    cancelSignal: context.signal,
    encoding: 'buffer',
    env: {TMPDIR: context.dir},
    maxBuffer: {stderr: 1024 * 1024, stdout: bounds.maxOutput ?? 1024 * 1024},
    reject: false,
    stdin: 'ignore',
    stripFinalNewline: false,
  })
  let stopped: undefined | WafersError
  const stop = (error: WafersError) => {
    stopped ??= error
    child.kill('SIGKILL')
  }

  const image = describe(ref)
  const other = ref.host === undefined ? 'skopeo' : `the registry ${ref.host}`
  const idle = () =>
    new WafersError(
      `${other} moved less than 1 KiB in ${duration(idleTimeout)} while ${verb} ${image}; gave up (--idle-timeout ${duration(idleTimeout)}).`,
    )
  let mark = {at: Date.now(), bytes: 0}
  // With bounds.minRate, windows of --idle-timeout, each of which must move MIN_RATE a second:
  // bytes read from the registry or written to the layout, whichever is more (each byte is both).
  let window = {at: mark.at, moved: 0}
  const windowBytes = Math.max(IDLE_BYTES, Math.floor((MIN_RATE * idleTimeout) / 1000))
  const watch = setInterval(
    () => {
      const io = childIo(child.pid)
      if (io === undefined) return
      const now = Date.now()
      const moved = Math.max(io.read, io.written)
      if (bounds.maxRead !== undefined && io.read > bounds.maxRead) {
        stop(
          new WafersError(
            `${other} sent more than ${humanBytes(bounds.maxRead)} while ${verb} ${image}, more than the image's manifest, config and layers take; gave up.`,
          ),
        )
      } else if (io.read + io.written - mark.bytes >= IDLE_BYTES) {
        mark = {at: now, bytes: io.read + io.written}
      } else if (now - mark.at >= idleTimeout) {
        stop(idle())
      }

      if (bounds.minRate && stopped === undefined && now - window.at >= idleTimeout) {
        const inWindow = moved - window.moved
        if (inWindow < IDLE_BYTES) stop(idle())
        else if (inWindow < windowBytes) {
          stop(
            new WafersError(
              `${other} moved only ${inWindow} bytes in ${duration(idleTimeout)} while ${verb} ${image}, slower than the 1 KiB a second wafers waits for; gave up (--idle-timeout ${duration(idleTimeout)} is how long it measures).`,
            ),
          )
        }

        window = {at: now, moved}
      }
    },
    Math.max(50, Math.min(500, idleTimeout / 4)),
  )
  // skopeo's own --command-timeout ends it; this is for a skopeo that does not.
  const deadline =
    commandTimeout === undefined
      ? undefined
      : setTimeout(() => stop(timedOut(verb, image, commandTimeout)), commandTimeout + 5000)
  let result
  try {
    result = await child
  } finally {
    clearInterval(watch)
    clearTimeout(deadline)
  }

  if (result.isCanceled || context.signal?.aborted)
    throw new WafersError(`interrupted while ${verb} ${image}.`, {exit: 130})
  if (stopped) throw stopped
  const stderr = Buffer.from(result.stderr).toString('utf8')
  if (process.env.DEBUG) process.stderr.write(`skopeo ${argv.join(' ')}\n${stderr}`)
  if (result.isMaxBuffer) {
    throw new WafersError(
      `${bounds.what ?? `what skopeo printed for ${image}`} is larger than the ${humanBytes(bounds.maxOutput ?? 1024 * 1024)} wafers reads.`,
    )
  }

  if (result.failed) {
    if (commandTimeout !== undefined && /context deadline exceeded/.test(stderr))
      throw timedOut(verb, image, commandTimeout)
    if (bounds.plain) throw new WafersError(`skopeo failed while ${verb} ${image}.`)
    throw await explain(context, stderr || result.shortMessage || '', ref, {...bounds, argv})
  }

  return Buffer.from(result.stdout)
}

function timedOut(verb: string, image: string, ms: number): WafersError {
  return new WafersError(
    `${verb} ${image} took longer than ${duration(ms)}; gave up (--command-timeout ${duration(ms)}).`,
  )
}

/** The bytes process `pid` (a child not yet reaped, so the number is still its own) has read and written so far. */
function childIo(pid: number | undefined): undefined | {read: number; written: number} {
  if (pid === undefined) return undefined
  try {
    const text = readFileSync(`/proc/${pid}/io`, 'utf8')
    const read = Number(/^rchar: (\d+)$/m.exec(text)?.[1] ?? 0)
    const written = Number(/^wchar: (\d+)$/m.exec(text)?.[1] ?? 0)
    return {read, written}
  } catch {
    return undefined
  }
}

/** `ms` as skopeo's durations read: 2s, 1500ms, 5m. */
export function duration(ms: number): string {
  if (ms % 60_000 === 0 && ms >= 60_000) return `${ms / 60_000}m`
  if (ms % 1000 === 0) return `${ms / 1000}s`
  return `${ms}ms`
}

function humanBytes(n: number): string {
  if (n >= 1024 * 1024 && n % (1024 * 1024) === 0) return `${n / (1024 * 1024)} MiB`
  return `${n} bytes`
}

/** The raw manifest or index REF names (`skopeo inspect --raw`), byte for byte. */
export async function inspectRaw(context: SkopeoContext, ref: ImageReference, skopeoRef = ref.skopeo): Promise<Buffer> {
  return skopeo(context, ['inspect', '--raw', ...skopeoRegistryArgs(context, ''), skopeoRef], ref, 'reading', {
    maxOutput: MAX_JSON_BLOB,
    maxRead: ref.transport === 'docker' ? 3 * MAX_JSON_BLOB : undefined,
    what: `the manifest of ${describe(ref)}`,
  })
}

/** The raw image config of REF (`skopeo inspect --config --raw`), byte for byte. */
export async function inspectConfig(
  context: SkopeoContext,
  ref: ImageReference,
  skopeoRef = ref.skopeo,
): Promise<Buffer> {
  return skopeo(
    context,
    ['inspect', '--config', '--raw', ...skopeoRegistryArgs(context, ''), skopeoRef],
    ref,
    'reading',
    {
      maxOutput: MAX_JSON_BLOB,
      maxRead: ref.transport === 'docker' ? 3 * MAX_JSON_BLOB : undefined,
      what: `the config of ${describe(ref)}`,
    },
  )
}

/**
 * Copies the image at `source` into the OCI layout directory `layout` (tagged `image`), keeping
 * every layer blob as it is (an uncompressed layer stays uncompressed, so its digest is the one
 * the manifest names). From a registry, no file skopeo writes can grow past the largest of
 * `missing` (the layers to download, of all `layers`) and `others` (the most the config and the
 * manifest it writes take), so a blob longer than its descriptor says is cut off there.
 */
export async function copyToLayout(
  context: SkopeoContext,
  ref: ImageReference,
  source: string,
  layout: string,
  layers: Descriptor[],
  missing: Descriptor[],
  others: number,
): Promise<void> {
  const largest = Math.max(others, ...missing.map((layer) => layer.size))
  const total = missing.reduce((sum, layer) => sum + layer.size, 0)
  const network = ref.transport === 'docker'
  const pending = () =>
    missing.filter((layer) => {
      try {
        return statSync(path.join(layout, 'blobs', 'sha256', layer.digest.slice(7))).size !== layer.size
      } catch {
        return true
      }
    })
  await skopeo(
    context,
    // The policy is checked on the source whatever the destination; an OCI layout cannot hold signatures.
    [
      ...trustFlags(context, true),
      'copy',
      '--quiet',
      '--remove-signatures',
      '--dest-oci-accept-uncompressed-layers',
      ...skopeoRegistryArgs(context, 'src-'),
      source,
      `oci:${layout}:image`,
    ],
    ref,
    'downloading',
    {
      layers,
      maxFile: network ? largest + 1 : undefined,
      maxRead: network ? 2 * total + 4 * MAX_JSON_BLOB : undefined,
      minRate: network,
      pending,
    },
  )
}

/** Copies the image in the OCI layout `layout` (tag `image`) to `ref`; returns the manifest digest written there. */
export async function copyFromLayout(
  context: SkopeoContext,
  layout: string,
  ref: ImageReference,
  digestFile: string,
  layers: Descriptor[] = [],
): Promise<string> {
  const total = layers.reduce((sum, layer) => sum + layer.size, 0)
  await skopeo(
    context,
    [
      ...trustFlags(context, false),
      'copy',
      '--quiet',
      '--digestfile',
      digestFile,
      ...signFlags(context),
      ...skopeoRegistryArgs(context, 'dest-'),
      `oci:${layout}:image`,
      ref.skopeo,
    ],
    ref,
    'pushing to',
    {layers, maxRead: ref.transport === 'docker' ? 4 * total + 4 * MAX_JSON_BLOB : undefined},
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
async function explain(
  context: SkopeoContext,
  stderr: string,
  ref: ImageReference,
  run: Bounds & {argv: string[]},
): Promise<WafersError> {
  const raw = stderr
    .split('\n')
    .map((line) => /msg="((?:[^"\\]|\\.)*)"/.exec(line)?.[1]?.replaceAll('\\"', '"') ?? line)
    .filter((line) => line.trim() !== '')
    .join(' ')
  let text = raw
  const image = describe(ref)
  const host = ref.host ?? ''
  const names = [ref.skopeo, ref.text, ref.path, ref.name, ref.repository, ref.tag, ref.digest]
  for (const name of names.filter((n): n is string => Boolean(n)).sort((x, y) => y.length - x.length))
    text = text.replaceAll(name, '\u0000')
  const said = (pattern: RegExp) => pattern.test(text)
  const status = (code: number, phrase: string) =>
    new RegExp(`status code( from registry)?:? ${code}\\b|\\b${code} \\(?${phrase}\\b|\\bHTTP ${code}\\b`, 'i')
  const debug = process.env.DEBUG ? [`skopeo ${run.argv.join(' ')} said: ${raw}`] : []
  const layers = run.layers ?? []
  const layer = (digest: string) => {
    const i = layers.findIndex((one) => one.digest === digest)
    return i === -1 ? `the blob ${digest}` : `layer ${i + 1} of ${layers.length} (${digest})`
  }

  const mismatch = /expected (sha256:[0-9a-f]{64}), got (sha256:[0-9a-f]{64})/.exec(raw)
  if (mismatch) {
    return new WafersError(
      `${layer(mismatch[1])} of ${image} does not match its digest: the manifest says ${mismatch[1]}, ${host ? `the registry ${host}` : 'the source'} sent ${mismatch[2]}.`,
      {suggestions: debug},
    )
  }

  const size = /[Ss]ize mismatch when copying (sha256:[0-9a-f]{64}), expected (\d+), got (\d+)/.exec(raw)
  if (size) {
    return new WafersError(
      `${layer(size[1])} of ${image} is ${size[3]} bytes, not the ${size[2]} its descriptor says.`,
      {suggestions: debug},
    )
  }

  const huge = /exceeded maximum allowed size of (\d+) bytes/.exec(raw)
  if (huge) {
    return new WafersError(
      `${host ? `the registry ${host}` : 'the source'} sent more than ${humanBytes(Number(huge[1]))} for the manifest or config of ${image}, the most skopeo reads; gave up.`,
      {suggestions: debug},
    )
  }

  if (/file too large/.test(raw) && run.maxFile !== undefined) {
    const pending = run.pending?.() ?? layers
    return new WafersError(
      `${pending.length === 1 ? layer(pending[0].digest) : 'a layer'} of ${image} is larger than its descriptor says (${host ? `the registry ${host}` : 'the source'} sent more than ${run.maxFile - 1} bytes); gave up.`,
      {suggestions: debug},
    )
  }

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
  return skopeo(context, ['list-tags', ...skopeoRegistryArgs(context, ''), `docker://${ref.name}`], ref, 'reading', {
    maxOutput: MAX_JSON_BLOB,
    plain: true,
  }).then(
    () => true,
    () => false,
  )
}
