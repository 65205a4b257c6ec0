import path from 'node:path'

import {WafersError, quote, shown} from '../errors.js'
import {MAX_NAME_LENGTH, isValidName} from '../store/names.js'

/** The skopeo transports wafers pulls from and pushes to. */
export type Transport = 'docker' | 'docker-archive' | 'oci' | 'oci-archive'

/** An image reference in skopeo's transport syntax, taken apart. */
export interface ImageReference {
  /** For docker://: a pinned digest (`sha256:...`), if the reference has one. */
  digest?: string
  /** For docker://: the registry host (and port), `docker.io` when none is written. */
  host?: string
  /** For docker://: the image name as written, without transport, tag or digest. */
  name?: string
  /** For the local transports: the directory or file. */
  path?: string
  /** For docker://: the repository path on the registry, as written (`library/` is skopeo's to add). */
  repository?: string
  /** What skopeo is given: `docker://HOST/REPO:TAG`, `oci:DIR:TAG`, ... */
  skopeo: string
  /** The tag (docker://, oci:, oci-archive:), if the reference has one. */
  tag?: string
  /** As the user wrote it. */
  text: string
  transport: Transport
}

const DIGEST = /^sha256:[\da-f]{64}$/
const TAG = /^[\w][\w.-]{0,127}$/

/**
 * Parses REF as skopeo does: `docker://HOST/REPO[:TAG|@DIGEST]`, a bare `REPO[:TAG]` (docker://),
 * `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE`. Refuses anything else in one sentence.
 */
export function parseReference(text: string): ImageReference {
  const match = /^([a-z-]+):(.*)$/.exec(text)
  const scheme = match?.[1]
  if (scheme === 'docker' && match![2].startsWith('//')) return parseDocker(text, match![2].slice(2))
  if (scheme === 'oci' || scheme === 'oci-archive') return parseLocal(text, scheme, match![2])
  if (scheme === 'docker-archive') {
    const file = match![2]
    if (file === '') throw new WafersError(`image reference ${quote(text)} names no file.`)
    return {path: path.resolve(file), skopeo: `docker-archive:${path.resolve(file)}`, text, transport: 'docker-archive'}
  }

  if (scheme !== undefined && !text.includes('/') && TAG.test(match![2])) return parseDocker(text, text) // busybox:1.36
  if (scheme === undefined || text.includes('/')) return parseDocker(text, text)
  throw new WafersError(
    `image reference ${quote(text)} has an unknown transport ${scheme}:; use docker://, oci:, oci-archive: or docker-archive:.`,
  )
}

function parseDocker(text: string, rest: string): ImageReference {
  const bad = () =>
    new WafersError(
      `image reference ${quote(text)} is not valid; write it as [docker://]HOST/REPO:TAG or @sha256:DIGEST.`,
    )
  let name = rest
  let digest: string | undefined
  let tag: string | undefined
  const at = name.indexOf('@')
  if (at !== -1) {
    digest = name.slice(at + 1)
    name = name.slice(0, at)
    if (!DIGEST.test(digest)) throw bad()
  }

  const colon = name.lastIndexOf(':')
  if (colon > name.lastIndexOf('/')) {
    tag = name.slice(colon + 1)
    name = name.slice(0, colon)
    if (!TAG.test(tag)) throw bad()
  }

  if (
    !/^[\w.-]+(?::\d+)?(?:\/[\w.-]+)*$/.test(name) ||
    name.split('/').some((part) => part === '' || part === '.' || part === '..')
  ) {
    throw bad()
  }

  const first = name.split('/')[0]
  const hasHost = name.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')
  const host = hasHost ? first : 'docker.io'
  const repository = hasHost ? name.slice(first.length + 1) : name
  if (digest === undefined && tag === undefined) tag = 'latest'
  const suffix = digest === undefined ? `:${tag}` : `@${digest}`
  return {digest, host, name, repository, skopeo: `docker://${name}${suffix}`, tag, text, transport: 'docker'}
}

function parseLocal(text: string, transport: 'oci' | 'oci-archive', rest: string): ImageReference {
  // skopeo splits oci:PATH:TAG at the first colon after the path; paths with colons are not supported there either.
  const colon = rest.indexOf(':')
  const file = colon === -1 ? rest : rest.slice(0, colon)
  const tag = colon === -1 ? undefined : rest.slice(colon + 1)
  if (file === '')
    throw new WafersError(`image reference ${quote(text)} names no ${transport === 'oci' ? 'directory' : 'file'}.`)
  if (tag !== undefined && !TAG.test(tag)) {
    throw new WafersError(`image reference ${quote(text)} has an invalid tag ${quote(tag)}.`)
  }

  const absolute = path.resolve(file)
  return {
    path: absolute,
    skopeo: `${transport}:${absolute}${tag === undefined ? '' : `:${tag}`}`,
    tag,
    text,
    transport,
  }
}

/** The reference with its tag replaced by a digest: what to copy so that a tag moved meanwhile changes nothing. */
export function pinned(ref: ImageReference, digest: string): string {
  return ref.transport === 'docker' ? `docker://${ref.name}@${digest}` : ref.skopeo
}

/** How the user would read the image: `HOST/REPO:TAG` for a registry, the reference otherwise. */
export function describe(ref: ImageReference): string {
  if (ref.transport !== 'docker') return shown(ref.text)
  return shown(`${ref.host}/${ref.repository}${ref.digest ? `@${ref.digest}` : `:${ref.tag}`}`)
}

/**
 * The default wafer name for an image: the last path component of its repository (or the layout
 * directory's or archive's name), made a valid machine name.
 */
export function defaultName(ref: ImageReference): string {
  const last =
    ref.transport === 'docker'
      ? ref.repository!.split('/').at(-1)!
      : path.basename(ref.path!).replace(/\.(tar|oci|tar\.gz|tgz)$/, '')
  return machineName(last, 'image')
}

/** `text` made a valid wafer name: other characters become `-`, no leading `.`/`-`, at most 64 characters. */
export function machineName(text: string, fallback: string): string {
  const name = text
    .replaceAll(/[^\w.-]/g, '-')
    .replace(/^[.-]+/, '')
    .slice(0, MAX_NAME_LENGTH)
  return isValidName(name) ? name : fallback
}
