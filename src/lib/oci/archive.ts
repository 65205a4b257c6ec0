/**
 * Layer tars <-> wafers: the one archive module pull, push and build use (as containers/storage's
 * pkg/archive). Unpacking streams a blob through Node (digests, decompression, a check of every
 * entry, whiteouts rewritten) into GNU tar, which extracts with every attribute; packing walks a
 * wafer in Node and writes a reproducible tar through pigz. See README, "Layer tars".
 */
import type {Readable} from 'node:stream'

import {WafersError} from '../errors.js'

/** How a layer blob is compressed. */
export type LayerCompression = 'gzip' | 'zstd' | 'none'

/** The media type packLayer writes. */
export const LAYER_MEDIA_TYPE = 'application/vnd.oci.image.layer.v1.tar+gzip'

const LAYER_TYPES: Record<string, LayerCompression> = {
  'application/vnd.docker.image.rootfs.diff.tar': 'none',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.diff.tar.zstd': 'zstd',
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
}

/**
 * The compression of a layer from its media type (OCI and Docker v2 types, +gzip/+zstd/plain);
 * throws WafersError for foreign or non-distributable layers and for unknown types.
 */
export function compressionOf(mediaType: string): LayerCompression {
  const compression = LAYER_TYPES[mediaType]
  if (compression !== undefined) return compression
  if (/foreign|nondistributable/.test(mediaType)) {
    throw new WafersError(
      `the image has a non-distributable (foreign) layer of type ${mediaType}, which wafers cannot pull or push.`,
    )
  }

  throw new WafersError(
    `the image has a layer of type ${JSON.stringify(mediaType)}, which is not a layer tar wafers knows.`,
  )
}

export interface UnpackOptions {
  compression: LayerCompression
  /** The digest the blob must have (the manifest's layer digest). */
  expectDigest?: string
  /** The digest the uncompressed tar must have (the config's rootfs.diff_ids entry). */
  expectDiffId?: string
  /** How messages name the layer, e.g. its digest or 'layer 3 of 5'. */
  name?: string
  signal?: AbortSignal
  onBytes?: (compressedBytesSoFar: number) => void
}

export interface UnpackResult {
  /** sha256:<hex> of the bytes read. */
  digest: string
  /** sha256:<hex> of the uncompressed tar. */
  diffId: string
  /** Entries in the layer, whiteouts included. */
  entries: number
}

/** GNU tar, extracting the checked stream on its stdin into `data` with every attribute. */
function tarExtractArgs(data: string): string[] {
  return [
    '--extract',
    '--file=-',
    `--directory=${data}`,
    '--numeric-owner',
    '--same-owner',
    '--same-permissions',
    '--xattrs',
    '--xattrs-include=*',
    '--acls',
    '--no-overwrite-dir',
    // Directory times and modes are set at the very end, so entries in any order keep them.
    '--delay-directory-restore',
  ]
}

/**
 * Unpacks one layer blob read from `input` into `data`, an existing empty directory the caller
 * made (a staging wafer's data). OCI whiteouts become overlayfs ones (.wh.NAME -> 0/0 char device
 * NAME; .wh..wh..opq -> trusted.overlay.opaque=y on its directory). Refuses, with a WafersError
 * naming the entry, any entry that would land outside `data` (../, absolute, through a symlink
 * made by an earlier entry, hard link to outside). A digest or diffID mismatch throws a
 * WafersError naming the layer. Streams: never holds a layer in memory. On any throw the caller
 * deletes `data`; nothing was written outside it.
 */
export async function unpackLayer(
  input: NodeJS.ReadableStream | Readable,
  data: string,
  options: UnpackOptions,
): Promise<UnpackResult> {
  const [{execa}, {pipeline}, {Transform}, zlib, {gateLayer}, {digestOf, sha256}, xattr, {promises: fs}, path] =
    await Promise.all([
      import('execa'),
      import('node:stream/promises'),
      import('node:stream'),
      import('node:zlib'),
      import('./tar-gate.js'),
      import('./digest.js'),
      loadXattr(),
      import('node:fs'),
      import('node:path'),
    ])
  const layer = options.name ?? 'the layer'
  const signal = options.signal
  if (signal?.aborted) throw interrupted(layer)

  const tar = execa('tar', tarExtractArgs(data), {
    buffer: {stderr: true, stdout: false},
    reject: false,
    stderr: 'pipe',
    stdin: 'pipe',
    stdout: 'ignore',
  })
  tar.stdin.on('error', () => {}) // an early exit of tar is reported from its exit status
  const tarDone = tar.then((result) => result)

  const blobHash = sha256()
  let bytes = 0
  const tap = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      blobHash.update(chunk)
      bytes += chunk.length
      options.onBytes?.(bytes)
      callback(null, chunk)
    },
  })
  const tarHash = options.compression === 'none' ? undefined : sha256()
  const zstd =
    options.compression === 'zstd'
      ? execa('zstd', ['--decompress', '--stdout', '--quiet'], {encoding: 'buffer', stderr: 'ignore'})
      : undefined
  zstd?.catch(() => {}) // awaited below; this only keeps a failure from going unhandled
  const decompress =
    options.compression === 'gzip'
      ? [zlib.createGunzip({chunkSize: 256 * 1024})]
      : zstd
        ? [zstd.duplex({binary: true})]
        : []

  let gate: Awaited<ReturnType<typeof gateLayer>>
  try {
    try {
      // The stages vary with the compression, which pipeline's overloads cannot type.
      await (pipeline as unknown as (...stages: unknown[]) => Promise<void>)(
        input,
        tap,
        ...decompress,
        async (source: AsyncIterable<Buffer>) => {
          gate = await gateLayer(source, tar.stdin, {hash: tarHash, layer, stopped: tarDone})
        },
        {signal},
      )
      await zstd
    } catch (error) {
      throw readError(error, layer, options.compression, signal)
    }

    tar.stdin.end()
    const result = await tarDone
    if (result.exitCode !== 0) {
      const why = firstTarError(result.stderr as string)
      throw new WafersError(`${layer} could not be unpacked: ${why}`)
    }
  } catch (error) {
    tar.kill()
    zstd?.kill()
    await Promise.allSettled([tarDone, zstd])
    throw error
  }

  const digest = digestOf(blobHash)
  const diffId = tarHash ? digestOf(tarHash) : digest
  if (options.expectDigest !== undefined && digest !== options.expectDigest) {
    throw new WafersError(`${layer} does not match its digest ${options.expectDigest}: its bytes hash to ${digest}.`)
  }

  if (options.expectDiffId !== undefined && diffId !== options.expectDiffId) {
    throw new WafersError(
      `${layer} does not match its diffID ${options.expectDiffId}: its uncompressed tar hashes to ${diffId}.`,
    )
  }

  for (const dir of gate!.opaque) {
    const file = path.join(data, dir.toString('utf8'))
    // eslint-disable-next-line no-await-in-loop
    const stat = await fs.lstat(file)
    if (!stat.isDirectory()) {
      throw new WafersError(
        `${layer} was refused: it marks ${JSON.stringify(dir.toString('utf8'))} opaque, which is not a directory.`,
      )
    }

    // eslint-disable-next-line no-await-in-loop
    await xattr.setAttribute(file, 'trusted.overlay.opaque', 'y')
  }

  return {diffId, digest, entries: gate!.entries}
}

function interrupted(layer: string): WafersError {
  return new WafersError(`unpacking ${layer} was interrupted.`)
}

/** One sentence for what went wrong while reading, decompressing or checking a layer. */
function readError(error: unknown, layer: string, compression: LayerCompression, signal?: AbortSignal): Error {
  if (error instanceof WafersError) return error
  if (signal?.aborted) return interrupted(layer)
  const code = (error as NodeJS.ErrnoException)?.code ?? ''
  if (compression === 'gzip' && /^Z_|^ERR_ZLIB/.test(code)) return new WafersError(`${layer} is not valid gzip data.`)
  if (compression === 'zstd' && (error as {command?: string})?.command?.startsWith('zstd'))
    return new WafersError(`${layer} is not valid zstd data.`)
  if ((error as Error)?.message === 'tar stopped reading')
    return new WafersError(`${layer} could not be unpacked: tar stopped early.`)
  return new WafersError(`reading ${layer} failed: ${(error as Error)?.message ?? String(error)}`)
}

/** The first error line GNU tar printed, without its "tar: " prefix. */
function firstTarError(stderr: string): string {
  const line = stderr
    .split('\n')
    .map((text) => text.replace(/^tar: /, '').trim())
    .find((text) => text !== '' && !/^Exiting with failure/.test(text))
  return line ? `tar says: ${line}` : 'tar failed.'
}

/** The xattr binding, loaded only when needed. */
async function loadXattr(): Promise<{
  getAttribute(file: string, name: string): Promise<Buffer | null>
  listAttributes(file: string): Promise<string[]>
  setAttribute(file: string, name: string, value: Buffer | string): Promise<void>
}> {
  const module = await import('@napi-rs/xattr')
  return (module as unknown as {default?: typeof module}).default ?? module
}
