import {closeSync, createReadStream, mkdirSync, readSync} from 'node:fs'
import path from 'node:path'
import {Readable} from 'node:stream'

import {WafersError} from '../errors.js'
import {openStoreFile, readSmallFile, writeFileAtomic} from '../host/files.js'
import type {LayerCompression} from '../layer/archive.js'
import {digestOf, sha256} from '../layer/digest.js'
import {Descriptor, Index, MEDIA, Manifest, checkDigest, checkManifest, isIndex, selectPlatform} from './image.js'
import type {Platform} from './platform.js'

/** The largest manifest, index or config wafers reads (they are JSON; a hostile one cannot exhaust memory). */
export const MAX_JSON_BLOB = 8 * 1024 * 1024

/** The annotation that tags a manifest in an OCI layout's index.json. */
export const REF_NAME = 'org.opencontainers.image.ref.name'

/** Where blob `digest` lives in the OCI layout at `dir`; refuses digests that are not sha256. */
export function blobPath(dir: string, digest: string): string {
  return path.join(dir, 'blobs', 'sha256', checkDigest(digest, 'a blob').slice(7))
}

/**
 * A stream of the blob `descriptor` names in the layout at `dir`, opened as openStoreFile does: a
 * regular file of exactly `descriptor.size` bytes, of which never more are read.
 */
export function openBlob(dir: string, descriptor: Descriptor, what: string): Readable {
  const opened = openStoreFile(blobPath(dir, descriptor.digest), what, (size) => {
    if (size !== descriptor.size)
      throw new WafersError(`${what} is ${size} bytes, not the ${descriptor.size} its descriptor says.`)
  })
  if (opened === undefined) throw new WafersError(`${what} is missing from the layout ${dir}.`)
  if (opened.size === 0) {
    closeSync(opened.fd)
    return Readable.from([])
  }

  return createReadStream('', {end: opened.size - 1, fd: opened.fd, highWaterMark: 1024 * 1024, start: 0})
}

/**
 * The compression blob `descriptor` really has, from its first bytes, where they show gzip or zstd
 * or neither; `said` (from its media type) when it is empty. skopeo's docker-archive source calls
 * every layer gzip, compressed or not; the diffID check still proves what was unpacked.
 */
export function blobCompression(
  dir: string,
  descriptor: Descriptor,
  said: LayerCompression,
  what: string,
): LayerCompression {
  const opened = openStoreFile(blobPath(dir, descriptor.digest), what, () => {})
  if (opened === undefined) return said
  try {
    const head = Buffer.alloc(4)
    const n = readSync(opened.fd, head, 0, 4, 0)
    return sniffCompression(head.subarray(0, n), said)
  } finally {
    closeSync(opened.fd)
  }
}

/** The compression that the first (up to four) bytes of a blob show; `said` for an empty blob. */
export function sniffCompression(head: Buffer, said: LayerCompression): LayerCompression {
  if (head.length === 0) return said
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip'
  if (head.length === 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd'
  return 'none'
}

/** Parses JSON `bytes`, refusing what is not an object in one sentence. */
export function parseJson(bytes: Buffer | string, what: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(bytes.toString())
  } catch {
    throw new WafersError(`${what} is not valid JSON.`)
  }

  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new WafersError(`${what} is not a JSON object.`)
  return value as Record<string, unknown>
}

/** The JSON blob `descriptor` points at in the layout at `dir`, after checking its digest and size. */
export function readJsonBlob(
  dir: string,
  descriptor: Descriptor,
  what: string,
): {raw: Buffer; value: Record<string, unknown>} {
  const raw = readSmallFile(blobPath(dir, descriptor.digest), what, MAX_JSON_BLOB, descriptor.size)
  if (raw === undefined) throw new WafersError(`${what} (${descriptor.digest}) is missing from the layout ${dir}.`)
  const digest = digestOf(sha256().update(raw))
  if (digest !== descriptor.digest)
    throw new WafersError(`${what} does not match its digest ${descriptor.digest}: its bytes hash to ${digest}.`)
  return {raw, value: parseJson(raw, what)}
}

/** The index.json of the OCI layout at `dir`; refuses a directory that is not one. */
export function readLayoutIndex(dir: string): Index {
  const what = `the OCI layout ${dir}`
  const marker = readSmallFile(path.join(dir, 'oci-layout'), `the oci-layout file of ${dir}`, MAX_JSON_BLOB)
  const raw = readSmallFile(path.join(dir, 'index.json'), `the index.json of ${dir}`, MAX_JSON_BLOB)
  if (marker === undefined || raw === undefined)
    throw new WafersError(`${what} does not exist or is not an OCI image layout (no oci-layout or index.json).`)
  const index = parseJson(raw, `the index.json of ${dir}`) as unknown as Index
  if (!Array.isArray(index.manifests)) throw new WafersError(`the index.json of ${dir} lists no manifests.`)
  return index
}

/** One image found in a layout: its manifest, the raw bytes and the digest of those. */
export interface LayoutImage {
  digest: string
  manifest: Manifest
  raw: Buffer
}

/**
 * The image tagged `tag` in the OCI layout at `dir` (or its only image when no tag is given),
 * going through nested indexes to the manifest for `platform`.
 */
export function findLayoutImage(dir: string, tag: string | undefined, platform: Platform): LayoutImage {
  const index = readLayoutIndex(dir)
  const where = `the OCI layout ${dir}`
  let descriptor: Descriptor | undefined
  if (tag === undefined) {
    if (index.manifests.length !== 1) {
      const tags = index.manifests.map((entry) => entry.annotations?.[REF_NAME]).filter(Boolean)
      throw new WafersError(
        `${where} holds ${index.manifests.length} images; name one with :TAG (${tags.join(', ') || 'none is tagged'}).`,
      )
    }

    descriptor = index.manifests[0]
  } else {
    descriptor = index.manifests.find((entry) => entry.annotations?.[REF_NAME] === tag)
    if (!descriptor) throw new WafersError(`tag ${tag} not found in ${where}.`)
  }

  for (let depth = 0; depth < 4; depth++) {
    const what = `the manifest ${descriptor.digest} in ${where}`
    const {raw, value} = readJsonBlob(dir, descriptor, what)
    if (isIndex(value, descriptor.mediaType)) {
      descriptor = selectPlatform(value, platform, `the image index in ${where}`)
      continue
    }

    return {digest: descriptor.digest, manifest: checkManifest(value, what), raw}
  }

  throw new WafersError(`${where} nests image indexes too deep.`)
}

/** Writes a JSON blob into the layout at `dir`; returns its descriptor. */
export function writeJsonBlob(dir: string, value: unknown, mediaType: string): Descriptor {
  const raw = Buffer.from(JSON.stringify(value))
  const digest = digestOf(sha256().update(raw))
  mkdirSync(path.join(dir, 'blobs', 'sha256'), {recursive: true})
  writeFileAtomic(blobPath(dir, digest), raw)
  return {digest, mediaType, size: raw.length}
}

/** Makes `dir` an OCI layout whose index.json lists `manifest`, tagged `tag`. Blobs are written separately. */
export function writeLayoutIndex(dir: string, manifest: Descriptor, tag: string): void {
  mkdirSync(path.join(dir, 'blobs', 'sha256'), {recursive: true})
  writeFileAtomic(path.join(dir, 'oci-layout'), JSON.stringify({imageLayoutVersion: '1.0.0'}))
  const index: Index = {
    manifests: [{...manifest, annotations: {[REF_NAME]: tag}}],
    mediaType: MEDIA.ociIndex,
    schemaVersion: 2,
  }
  writeFileAtomic(path.join(dir, 'index.json'), JSON.stringify(index))
}
