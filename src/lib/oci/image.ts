import {WafersError} from '../errors.js'
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
    throw new WafersError(`${what} has the digest ${JSON.stringify(digest)}; wafers takes sha256 digests only.`)
  }

  return digest
}

function checkDescriptor(value: unknown, what: string): Descriptor {
  const descriptor = value as Descriptor
  if (typeof descriptor !== 'object' || descriptor === null || typeof descriptor.mediaType !== 'string') {
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

  checkDescriptor(manifest.config, `the config of ${what}`)
  if (!Array.isArray(manifest.layers)) throw new WafersError(`${what} lists no layers.`)
  for (const [i, layer] of manifest.layers.entries()) checkDescriptor(layer, `layer ${i + 1} of ${what}`)
  return manifest
}

/** Checks a parsed image config: architecture, os, and one diff_id per layer. */
export function checkConfig(value: unknown, layers: number, what: string): ImageConfigFile {
  const config = value as ImageConfigFile
  if (
    typeof config !== 'object' ||
    config === null ||
    typeof config.architecture !== 'string' ||
    typeof config.os !== 'string'
  ) {
    throw new WafersError(`${what} is not an image config: it has no architecture or os.`)
  }

  const diffIds = config.rootfs?.diff_ids
  if (!Array.isArray(diffIds) || diffIds.length !== layers) {
    throw new WafersError(
      `${what} lists ${Array.isArray(diffIds) ? diffIds.length : 'no'} diff_ids for ${layers} layers.`,
    )
  }

  for (const [i, diffId] of diffIds.entries()) checkDigest(diffId, `diff_id ${i + 1} of ${what}`)
  if (config.history !== undefined && !Array.isArray(config.history))
    throw new WafersError(`${what} has an invalid history.`)
  return config
}

/**
 * The manifest of `index` for `platform`: the one whose platform has the same OS and architecture
 * (and variant, when both say one). Refuses in one sentence naming what the index has instead.
 */
export function selectPlatform(index: Index, platform: Platform, what: string): Descriptor {
  const manifests = (index.manifests ?? []).map((entry, i) => checkDescriptor(entry, `entry ${i + 1} of ${what}`))
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
