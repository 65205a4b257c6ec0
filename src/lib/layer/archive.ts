/**
 * Layer tars <-> wafers: the one archive module pull, push and build use (as containers/storage's
 * pkg/archive). Unpacking streams a blob through Node (digests, decompression) into the one tar
 * reader and unpacker (tar/reader.ts, unpack.ts), which write every entry themselves; packing walks a
 * wafer in Node and writes a reproducible tar through igzip (compress.ts). See docs/oci.md, "Layer tars".
 */
import type {Readable} from 'node:stream'

import {WafersError, isErrno} from '../errors.js'
import {withUs} from '../host/run.js'
import {quote} from './tar/reader.js'

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

  throw new WafersError(`the image has a layer of type ${quote(mediaType)}, which is not a layer tar wafers knows.`)
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
  /**
   * The data directories of the layers below, nearest first: a parent directory the layer does
   * not list takes its owner, mode, time and attributes from there (else 0755 0:0, time 0).
   */
  lowers?: readonly string[]
}

export interface UnpackResult {
  /** sha256:<hex> of the bytes read. */
  digest: string
  /** sha256:<hex> of the uncompressed tar. */
  diffId: string
  /** Entries in the layer, whiteouts included. */
  entries: number
}

/**
 * Unpacks one layer blob read from `input` into `data`, an existing empty directory the caller
 * made (a staging wafer's data), through the one reader and unpacker (layer/unpack.ts). OCI
 * whiteouts become overlayfs ones (.wh.NAME -> 0/0 char device NAME; .wh..wh..opq ->
 * trusted.overlay.opaque=y on its directory). Refuses, with a WafersError naming the entry, any
 * entry that would land outside `data` (../, absolute, through a symlink or file made by an
 * earlier entry, hard link to outside) or that tar readers could read two ways. A digest or
 * diffID mismatch throws a WafersError naming the layer. Streams: never holds a layer in memory.
 * On any throw the caller deletes `data`; nothing was written outside it.
 */
export async function unpackLayer(
  input: NodeJS.ReadableStream | Readable,
  data: string,
  options: UnpackOptions,
): Promise<UnpackResult> {
  const [{execa}, {pipeline}, {Transform}, zlib, {unpackTar}, {digestOf, sha256}, {promises: fs}] = await Promise.all([
    import('execa'),
    import('node:stream/promises'),
    import('node:stream'),
    import('node:zlib'),
    import('./unpack.js'),
    import('./digest.js'),
    import('node:fs'),
  ])
  const layer = options.name ?? 'the layer'
  const signal = options.signal
  if (signal?.aborted) throw interrupted(layer)
  const held = await holdDirectory(data)
  try {
    if ((await fs.readdir(held.path)).length > 0)
      throw new WafersError(`${data} is not empty; a layer unpacks only into a new, empty directory.`)
    return await unpackInto(held.path)
  } finally {
    await held.close()
  }

  async function unpackInto(root: string): Promise<UnpackResult> {
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
    const zstdCommand = withUs('zstd', ['--decompress', '--stdout', '--quiet'])
    const zstd =
      options.compression === 'zstd'
        ? execa(zstdCommand.file, zstdCommand.args, {encoding: 'buffer', stderr: 'ignore'})
        : undefined
    zstd?.catch(() => {}) // awaited below; this only keeps a failure from going unhandled
    const decompress =
      options.compression === 'gzip'
        ? [zlib.createGunzip({chunkSize: 256 * 1024})]
        : zstd
          ? [zstd.duplex({binary: true})]
          : []

    let entries = 0
    let refused: unknown
    try {
      // The stages vary with the compression, which pipeline's overloads cannot type.
      await (pipeline as unknown as (...stages: unknown[]) => Promise<void>)(
        input,
        tap,
        ...decompress,
        async (source: AsyncIterable<Buffer>) => {
          try {
            ;({entries} = await unpackTar(source, root, {
              hash: tarHash,
              layer: true,
              lowers: options.lowers,
              name: layer,
              signal,
            }))
          } catch (error) {
            refused = error // reported before the abort it causes in the stages above
            throw error
          }
        },
        {signal},
      )
      await zstd
    } catch (error) {
      zstd?.kill()
      await Promise.allSettled([zstd])
      throw readError(refused ?? error, layer, options.compression, signal)
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

    return {diffId, digest, entries}
  }
}

/**
 * Opens directory `dir` and returns a path naming that very directory for as long as the handle
 * is open (/proc/PID/fd/N, which GNU tar as a child of ours can use too): a rename or a symlink
 * put in place of `dir` by someone else midway cannot redirect what follows.
 */
async function holdDirectory(dir: string): Promise<{close(): Promise<void>; path: string}> {
  const {constants, promises: fs} = await import('node:fs')
  const handle = await fs
    .open(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
    .catch((error: unknown) => {
      if (isErrno(error, 'ENOENT')) throw new WafersError(`${dir} does not exist.`)
      if (isErrno(error, 'ENOTDIR') || isErrno(error, 'ELOOP')) throw new WafersError(`${dir} is not a directory.`)
      throw error
    })
  return {close: () => handle.close(), path: `/proc/${process.pid}/fd/${handle.fd}`}
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
  // The command line names setpriv first when zstd runs through it (withUs).
  if (code === 'ENOENT' && /(^|\/)zstd /.test((error as {command?: string})?.command ?? ''))
    return new WafersError(`${layer} is zstd-compressed: install the zstd package, zstd is not on PATH.`)
  if (compression === 'zstd' && /(^|\/)zstd /.test((error as {command?: string})?.command ?? ''))
    return new WafersError(`${layer} is not valid zstd data.`)
  return new WafersError(`reading ${layer} failed: ${(error as Error)?.message ?? String(error)}`)
}

export interface PackResult {
  digest: string
  diffId: string
  /** Compressed bytes. */
  size: number
  /** application/vnd.oci.image.layer.v1.tar+gzip */
  mediaType: string
}

/** Bumped when packLayer would write other bytes for the same files, so cached blobs are not reused. */
const PACK_FORMAT = 'wafers-layer-4 igzip-2'

/**
 * Writes the files of wafer directory `data` as a reproducible OCI layer (gzip) to the new file
 * `output`, as tar/writer.ts writes a tar: overlayfs whiteouts (0/0 char devices, opaque marks in
 * either attribute form) become .wh. entries; entries sorted bytewise; owners numeric; mode incl.
 * setuid; symlinks; hard links; device nodes and FIFOs; xattrs as pax SCHILY.xattr.* as
 * xattrs.ts packs them; mtimes to the microsecond (atime/ctime dropped); no user/group names.
 * The same content gives the same bytes on every run and machine with the same compressor
 * (compress.ts says what its output depends on). `onBytes` gets the bytes of file content read
 * so far. On a throw, `output` may be left half written: the caller deletes it.
 */
export async function packLayer(
  data: string,
  output: string,
  options: {signal?: AbortSignal; onBytes?: (n: number) => void} = {},
): Promise<PackResult> {
  const [{writeLayerTar}, {startCompression}, {promises: fs}] = await Promise.all([
    import('./tar/writer.js'),
    import('./compress.js'),
    import('node:fs'),
  ])
  const held = await holdDirectory(data)
  try {
    const file = await fs.open(output, 'wx+').catch((error: unknown) => {
      if (isErrno(error, 'EEXIST')) throw new WafersError(`${output} already exists; packLayer writes a new file.`)
      throw error
    })
    try {
      const compression = await startCompression(file, {output, shownAs: data})
      try {
        try {
          await writeLayerTar(held.path, compression.input, {
            onBytes: options.onBytes,
            shownAs: data,
            signal: options.signal,
            stopped: compression.exited,
          })
        } finally {
          compression.input.end()
        }

        return {...(await compression.finish()), mediaType: LAYER_MEDIA_TYPE}
      } catch (error) {
        return await compression.stop(error)
      }
    } finally {
      await file.close()
    }
  } finally {
    await held.close()
  }
}

/** A rewrite of a tar stream as it passes: the bytes to pass on for each chunk, and at the end. */
export interface TarRewrite {
  end(): Buffer[]
  write(chunk: Buffer): Buffer[]
}

/**
 * The diffID packLayer would give the files of wafer directory `data` (the sha256 of the tar,
 * after `rewrite` when given), hashed as it is written and never stored: to check that a wafer
 * still holds a layer, without the cost of writing it.
 */
export async function layerDiffId(
  data: string,
  options: {rewrite?: TarRewrite; signal?: AbortSignal} = {},
): Promise<string> {
  const [{writeLayerTar}, {digestOf, sha256}, {Writable}] = await Promise.all([
    import('./tar/writer.js'),
    import('./digest.js'),
    import('node:stream'),
  ])
  const {rewrite} = options
  const written = sha256()
  const rewritten = sha256()
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      try {
        if (rewrite) for (const part of rewrite.write(chunk)) rewritten.update(part)
        callback()
      } catch (error) {
        callback(error as Error)
      }
    },
  })
  let failed: Error | undefined
  // The sink fails only when the rewrite refuses what it reads: the walk stops then.
  const stopped = new Promise((resolve) => {
    sink.once('error', (error) => {
      failed = error
      resolve(undefined)
    })
  })
  const held = await holdDirectory(data)
  try {
    await writeLayerTar(held.path, sink, {hash: written, shownAs: data, signal: options.signal, stopped})
  } catch (error) {
    throw failed ?? error
  } finally {
    await held.close()
  }

  if (failed) throw failed
  if (!rewrite) return digestOf(written)
  for (const part of rewrite.end()) rewritten.update(part)
  return digestOf(rewritten)
}

/**
 * What find prints of each entry for layerFingerprint: type, permission bits, inode, link count,
 * owner, size, mtime and ctime to the nanosecond, then the path below `data` and a NUL (no name
 * holds one). An xattr change, a chmod, a write or a rename shows in ctime, which only the kernel
 * sets; rdev cannot change without a new inode, and so a new ctime.
 */
const FINGERPRINT_ENTRY = '%y %m %i %n %U %G %s %T@ %C@ %P\\0'

/**
 * A cheap fingerprint of everything packLayer would read, from an lstat of every entry: equal
 * fingerprints mean an unchanged wafer, so a push can reuse its cached blob. GNU find (findutils,
 * essential on Debian) takes it: the walk is all system calls, and find makes them in half the time
 * a first walk of Node's takes (about 40 against 65 ms for a 6,800-entry minbase, inside a push),
 * on a core of its own. It never follows a symlink and opens directories only. Entries come in the order the file
 * system lists them, which stays the same while a directory is unchanged; a directory that is
 * rewritten in place with the same entries (fsck -D) only costs one more pack, which gives the same
 * blob. Refuses in a sentence when find cannot read all of `data` (say, a directory went away).
 */
export async function layerFingerprint(data: string, signal?: AbortSignal): Promise<string> {
  const [{spawn}, {digestOf, sha256}, {diesWithUs, systemProgram}, path, {lstatSync}] = await Promise.all([
    import('node:child_process'),
    import('./digest.js'),
    import('../host/run.js'),
    import('node:path'),
    import('node:fs'),
  ])
  const hash = sha256()
  hash.update(`${PACK_FORMAT} find-1\n`)
  const program = systemProgram('find')
  const find = diesWithUs(program, ['-P', path.resolve(data), '-printf', FINGERPRINT_ENTRY])
  const said: Buffer[] = []
  let saidBytes = 0
  let head = Buffer.alloc(0)
  const ended = await new Promise<{code: null | number; error?: Error; signal?: NodeJS.Signals | null}>((resolve) => {
    let child: ReturnType<typeof spawn>
    try {
      // Nothing of the caller's environment (POSIXLY_CORRECT, a locale) may change what find prints.
      child = spawn(find.file, find.args, {env: {LC_ALL: 'C'}, signal, stdio: ['ignore', 'pipe', 'pipe']})
    } catch (error) {
      resolve({code: null, error: error as Error})
      return
    }

    child.stdout!.on('data', (chunk: Buffer) => {
      if (head.length < ROOT_RECORD_BYTES) head = Buffer.concat([head, chunk.subarray(0, ROOT_RECORD_BYTES)])
      hash.update(chunk)
    })
    child.stderr!.on('data', (chunk: Buffer) => {
      if (saidBytes < 4096) said.push(chunk)
      saidBytes += chunk.length
    })
    child.once('error', (error) => resolve({code: null, error}))
    child.once('close', (code, signal_) => resolve({code, signal: signal_}))
  })
  const refuse = (why: string) =>
    new WafersError(`cannot tell whether ${data} changed: ${why}; try again once nothing writes to it.`)
  if (signal?.aborted) throw new WafersError(`interrupted while reading ${data}.`)
  if (ended.code !== 0) {
    const text = Buffer.concat(said).toString('utf8')
    if (ended.error) throw refuse('find could not be started')
    if (ended.signal) throw refuse(`find was killed by ${ended.signal}`)
    if (lstatSync(data, {throwIfNoEntry: false}) === undefined) throw refuse('it is not there')
    if (/No such file or directory|Not a directory/.test(text)) throw refuse('part of it went away while it was read')
    if (/Permission denied/.test(text)) throw refuse('part of it cannot be read')
    throw refuse(`find exited with code ${ended.code}`)
  }

  // The first record is `data` itself: a directory, in the form GNU find prints. A symlink or a file
  // there is no wafer, and a find that prints other fields (not GNU's) could miss a change.
  const root = head.subarray(0, head.indexOf(0) + 1).toString('latin1')
  if (!ROOT_RECORD.test(root)) throw refuse(`${program} does not print what GNU find prints`)
  if (!root.startsWith('d ')) throw refuse('it is not a directory')

  return digestOf(hash)
}

/** How GNU find prints the record of `data` by FINGERPRINT_ENTRY (its type first), times to the nanosecond. */
const ROOT_RECORD = /^[a-z] [0-7]+ \d+ \d+ \d+ \d+ \d+ -?\d+\.\d{10} -?\d+\.\d{10} \0$/
/** More than a root record can take. */
const ROOT_RECORD_BYTES = 256

/**
 * Whether `data` holds no entry at all and is not itself opaque (in either attribute form): such
 * a wafer adds a history entry, not a layer.
 */
export async function isEmptyLayer(data: string): Promise<boolean> {
  const [{promises: fs}, {loadXattr: loadBinding}, {isOpaqueDir}] = await Promise.all([
    import('node:fs'),
    import('../host/xattr.js'),
    import('./lookup.js'),
  ])
  const dir = await fs.opendir(data)
  try {
    if ((await dir.read()) !== null) return false
  } finally {
    await dir.close().catch(() => {})
  }

  await loadBinding()
  return !isOpaqueDir(`${data}/.`)
}
