import {WafersError, quote, shown} from '../errors.js'
import type {HistoryEntry, ImageConfig} from '../store/meta.js'
import {type Platform, platformText} from './platform.js'

/** Media types wafers reads and writes (OCI, and Docker's schema 2, which registries still serve). */
export const MEDIA = {
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
} as const

/** A content descriptor: what a manifest or index points at. */
export interface Descriptor {
  annotations?: Record<string, string>
  digest: string
  mediaType: string
  platform?: Platform
  size: number
}

/** An image manifest (OCI or Docker schema 2: the same shape). */
export interface Manifest {
  annotations?: Record<string, string>
  config: Descriptor
  layers: Descriptor[]
  mediaType?: string
  schemaVersion: 2
}

/** An image index or Docker manifest list. */
export interface Index {
  annotations?: Record<string, string>
  manifests: Descriptor[]
  mediaType?: string
  schemaVersion: 2
}

/** The image configuration blob (application/vnd.oci.image.config.v1+json). */
export interface ImageConfigFile {
  architecture: string
  author?: string
  config?: ImageConfig
  created?: string
  history?: HistoryEntry[]
  os: string
  rootfs: {diff_ids: string[]; type: 'layers'}
  variant?: string
}

const DIGEST = /^sha256:[\da-f]{64}$/

/** Refuses a digest wafers cannot check or that could name a path: only `sha256:` and 64 hex digits. */
export function checkDigest(digest: unknown, what: string): string {
  if (typeof digest !== 'string' || !DIGEST.test(digest)) {
    throw new WafersError(
      `${what} has ${typeof digest === 'string' ? `the digest ${quote(digest)}` : 'no digest'}; wafers takes sha256 digests only.`,
    )
  }

  return digest
}

function checkDescriptor(value: unknown, what: string): Descriptor {
  const descriptor = value as Descriptor
  if (!isObject(descriptor) || typeof descriptor.mediaType !== 'string') {
    throw new WafersError(`${what} is not a valid descriptor.`)
  }

  checkDigest(descriptor.digest, what)
  if (!Number.isSafeInteger(descriptor.size) || descriptor.size < 0) throw new WafersError(`${what} has no valid size.`)
  return descriptor
}

/** Whether the JSON document `value` (with the media type a registry or descriptor gave) is an index. */
export function isIndex(value: unknown, mediaType?: string): value is Index {
  const type = mediaType ?? (value as {mediaType?: string}).mediaType
  if (type === MEDIA.ociIndex || type === MEDIA.dockerList) return true
  return Array.isArray((value as Index).manifests) && !(value as Manifest).config
}

/** Checks a parsed manifest: schema 2, a config and layers with sha256 digests. Schema 1 is refused. */
export function checkManifest(value: unknown, what: string): Manifest {
  const manifest = value as Manifest
  if (typeof manifest !== 'object' || manifest === null || manifest.schemaVersion !== 2) {
    throw new WafersError(`${what} is not an OCI or Docker schema 2 image manifest.`)
  }

  if (manifest.mediaType !== undefined && typeof manifest.mediaType !== 'string')
    throw new WafersError(`${what} has a mediaType that is not a string.`)
  if (manifest.annotations !== undefined && !isObject(manifest.annotations))
    throw new WafersError(`${what} has annotations that are not an object.`)
  checkDescriptor(manifest.config, `the config of ${what}`)
  if (!Array.isArray(manifest.layers)) throw new WafersError(`${what} lists no layers.`)
  for (const [i, layer] of manifest.layers.entries()) checkDescriptor(layer, `layer ${i + 1} of ${what}`)
  return manifest
}

/**
 * Checks a parsed image config once, as it is read: architecture, os, one sha256 diff_id per layer,
 * and the type of every field wafers uses (Env, Cmd, Entrypoint: lists of strings; WorkingDir, User,
 * StopSignal: strings; Labels: strings by name; history: a list of entries). A refusal names the
 * field. Fields that are null, as Docker writes them, are left out of what it returns.
 */
export function checkConfig(value: unknown, layers: number, what: string): ImageConfigFile {
  if (!isObject(value)) throw new WafersError(`${what} is not an image config: it is not a JSON object.`)
  const config = value as unknown as ImageConfigFile
  if (typeof config.architecture !== 'string' || typeof config.os !== 'string') {
    throw new WafersError(`${what} is not an image config: it has no architecture or os.`)
  }

  for (const field of ['variant', 'author', 'created'] as const) checkString(config[field], field, what)
  if (!isObject(config.rootfs)) throw new WafersError(`${what} has no rootfs object.`)
  const diffIds = config.rootfs.diff_ids
  if (!Array.isArray(diffIds) || diffIds.length !== layers) {
    throw new WafersError(
      `${what} lists ${Array.isArray(diffIds) ? diffIds.length : 'no'} diff_ids for ${layers} layers.`,
    )
  }

  for (const [i, diffId] of diffIds.entries()) checkDigest(diffId, `diff_id ${i + 1} of ${what}`)
  const checked: ImageConfigFile = {...config}
  if (config.history === undefined || config.history === null) delete checked.history
  else checked.history = checkHistory(config.history, what)
  if (config.config === undefined || config.config === null) delete checked.config
  else checked.config = checkRunConfig(config.config, what)
  return checked
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function checkString(value: unknown, field: string, what: string): void {
  if (value !== undefined && value !== null && typeof value !== 'string') {
    throw new WafersError(`${what} has a ${field} that is not a string.`)
  }
}

function checkHistory(value: unknown, what: string): HistoryEntry[] {
  if (!Array.isArray(value)) throw new WafersError(`${what} has a history that is not a list.`)
  return value.map((entry: unknown, i) => {
    if (!isObject(entry)) throw new WafersError(`${what} has a history entry ${i + 1} that is not an object.`)
    for (const field of ['author', 'comment', 'created', 'created_by'])
      checkString(entry[field], `history entry ${i + 1} ${field}`, what)
    if (entry.empty_layer !== undefined && entry.empty_layer !== null && typeof entry.empty_layer !== 'boolean') {
      throw new WafersError(`${what} has a history entry ${i + 1} whose empty_layer is not true or false.`)
    }

    return entry as HistoryEntry
  })
}

/** The `config` object of an image config (Env, Cmd, ...), its fields checked, nulls left out. */
function checkRunConfig(value: unknown, what: string): ImageConfig {
  if (!isObject(value)) throw new WafersError(`${what} has a config field that is not an object.`)
  const result: Record<string, unknown> = {}
  for (const [field, entry] of Object.entries(value)) {
    if (entry === null) continue
    const bad = (type: string) => new WafersError(`${what} has a config.${shown(field)} that is not ${type}.`)
    switch (field) {
      case 'Cmd':
      case 'Entrypoint':
      case 'Env': {
        if (!Array.isArray(entry) || entry.some((item) => typeof item !== 'string')) throw bad('a list of strings')
        break
      }

      case 'StopSignal':
      case 'User':
      case 'WorkingDir': {
        if (typeof entry !== 'string') throw bad('a string')
        break
      }

      case 'Labels': {
        if (!isObject(entry) || Object.values(entry).some((item) => typeof item !== 'string'))
          throw bad('an object of strings')
        break
      }

      case 'ExposedPorts':
      case 'Volumes': {
        if (!isObject(entry)) throw bad('an object')
        break
      }

      default:
    }

    result[field] = entry
  }

  return result as ImageConfig
}

/**
 * The manifest of `index` for `platform`: the one whose platform has the same OS and architecture
 * (and variant, when both say one). Refuses in one sentence naming what the index has instead.
 */
export function selectPlatform(index: Index, platform: Platform, what: string): Descriptor {
  if (!Array.isArray(index.manifests)) throw new WafersError(`${what} has a manifests field that is not a list.`)
  const manifests = index.manifests.map((entry, i) => checkDescriptor(entry, `entry ${i + 1} of ${what}`))
  const fits = manifests.filter(
    (entry) => entry.platform?.os === platform.os && entry.platform?.architecture === platform.architecture,
  )
  const exact = fits.find(
    (entry) => !platform.variant || !entry.platform?.variant || entry.platform.variant === platform.variant,
  )
  if (exact) return exact
  const has = [...new Set(manifests.filter((entry) => entry.platform).map((entry) => platformText(entry.platform!)))]
  throw new WafersError(
    `${what} has no image for ${platformText(platform)}, this machine's platform; it has ${has.join(', ') || 'no platforms listed'}.`,
  )
}

/**
 * The history entries of each layer, bottom first: the entry that made it and the empty ones
 * after it (empty ones before the first layer go with the first). Undefined when the history does
 * not match the layers (it is optional, and some tools write it loosely).
 */
export function historyPerLayer(history: HistoryEntry[] | undefined, layers: number): HistoryEntry[][] | undefined {
  if (!history || history.length === 0 || layers === 0) return undefined
  if (history.filter((entry) => !entry.empty_layer).length !== layers) return undefined
  const result: HistoryEntry[][] = Array.from({length: layers}, () => [])
  let layer = -1
  for (const entry of history) {
    if (!entry.empty_layer) layer++
    result[Math.max(layer, 0)].push(entry)
  }

  return result
}
