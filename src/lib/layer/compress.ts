/**
 * The compressor every layer wafers packs goes through, as a child whose output Node writes: the
 * one place that decides a packed blob's bytes after the tar. See docs/oci.md, "Layer tars".
 */
import {writeSync} from 'node:fs'
import type {FileHandle} from 'node:fs/promises'
import type {Writable} from 'node:stream'

import {WafersError, asWafersError} from '../errors.js'
import {withUs} from '../host/run.js'

/**
 * gzip by ISA-L's igzip (Debian package isal), level 2, no name or time (`-n`), one thread. It
 * takes about a fifth of the CPU of `pigz -1` for a blob of the same size (bench/RESULTS.md,
 * 2026-12-07), and its output depends only on its input and version, and on whether the CPU has
 * SSE4.2 (ISA-L hashes with the CRC32 instruction where there is one): not on how the input is
 * cut, nor on the machine otherwise. Threads (`-T`) would change the bytes, so there are none.
 */
export const PACK_COMPRESSOR = {args: ['-2', '-n', '-c'], file: 'igzip', package: 'isal'}

/** A running compression of a tar into a blob file. */
export interface Compression {
  /** Settles when the compressor exits, however: a writer waiting on `input` stops then. */
  exited: Promise<unknown>
  /** Ends the input, waits for the blob, checks it and syncs the file; its digest and size. */
  finish(): Promise<{diffId: string; digest: string; size: number}>
  /** The compressor's standard input: every byte written here must also go to `tar`. */
  input: Writable
  /**
   * Stops the compressor after `error` of the caller's and throws what to tell the user: that
   * the compressor is not installed when that is why, else `error` as one sentence.
   */
  stop(error: unknown): Promise<never>
  /** Takes each part of the tar as it is written to `input`: hashed, counted and CRC'd. */
  tar: {update(part: Buffer): void}
}

/**
 * Starts PACK_COMPRESSOR with its output going, through Node, into the open new file `file` (at its
 * start), hashed on the way. igzip exits 0 even when the last write of its standard output fails,
 * so its exit status cannot vouch for the blob: finish() checks the gzip trailer, which must name
 * the CRC-32 and length of the tar that went in, and writes the blob itself, so that a full disk
 * is an error here. `names.output` is the file's path, `names.shownAs` names the layer in messages.
 */
export async function startCompression(
  file: FileHandle,
  names: {output: string; shownAs: string},
): Promise<Compression> {
  const {shownAs} = names
  const [{execa}, {crc32}, {digestOf, sha256}] = await Promise.all([
    import('execa'),
    import('node:zlib'),
    import('./digest.js'),
  ])
  const started = withUs(PACK_COMPRESSOR.file, PACK_COMPRESSOR.args)
  const child = execa(started.file, started.args, {
    buffer: {stderr: true, stdout: false},
    encoding: 'buffer',
    reject: false,
    stdin: 'pipe',
    stdout: 'pipe',
  })
  child.stdin.on('error', () => {}) // an early exit is reported from the exit status
  const exited = child.then((result) => result)
  const tarHash = sha256()
  let crc = 0
  let length = 0
  const blobHash = sha256()
  let size = 0
  let tail = Buffer.alloc(0)
  let writeError: unknown
  // Written as it comes, synchronously: the pipe from the compressor is emptied on the same turn
  // of the event loop that read it, so the compressor never waits on the walk between batches.
  child.stdout.on('data', (chunk: Buffer) => {
    if (writeError !== undefined) return
    try {
      for (let offset = 0; offset < chunk.length;) {
        const written = writeSync(file.fd, chunk, offset, chunk.length - offset, size + offset)
        if (written === 0) throw new Error('nothing was written')
        offset += written
      }
    } catch (error) {
      writeError = error
      child.kill()
      return
    }

    blobHash.update(chunk)
    size += chunk.length
    tail = chunk.length >= 8 ? Buffer.from(chunk.subarray(-8)) : Buffer.concat([tail, chunk]).subarray(-8)
  })
  const writing = new Promise<void>((resolve, reject) => {
    child.stdout.once('end', resolve)
    child.stdout.once('close', resolve)
    child.stdout.once('error', reject)
  })
  writing.catch(() => {}) // awaited in finish()
  /** Why the compression failed, when that is not the caller's to say: no compressor, or the disk. */
  const failure = (result: {code?: string}) => {
    if (result.code === 'ENOENT') {
      return new WafersError(
        `packing a layer needs ${PACK_COMPRESSOR.file}, which is not on PATH: install the ${PACK_COMPRESSOR.package} package.`,
      )
    }

    // A full disk, say: one sentence naming the blob file (describeSystemError).
    if (writeError !== undefined) return asWafersError(Object.assign(writeError as object, {path: names.output}))
    return undefined
  }

  return {
    exited,
    async finish() {
      child.stdin.end()
      const result = await exited
      await writing
      const failed = failure(result)
      if (failed) throw failed
      if (result.exitCode !== 0) {
        throw new WafersError(
          `compressing the layer of ${shownAs} failed: ${PACK_COMPRESSOR.file} exited with ${result.exitCode ?? result.signal}.`,
        )
      }

      if (tail.length < 8 || tail.readUInt32LE(0) !== crc >>> 0 || tail.readUInt32LE(4) !== length % 2 ** 32) {
        throw new WafersError(
          `compressing the layer of ${shownAs} failed: ${PACK_COMPRESSOR.file} wrote a blob that does not end with the tar it was given.`,
        )
      }

      await file.sync()
      return {diffId: digestOf(tarHash), digest: digestOf(blobHash), size}
    },
    input: child.stdin,
    async stop(error) {
      child.kill()
      const result = await exited
      await writing.catch(() => {})
      const said = asWafersError(error) // a system error as one sentence
      throw (
        failure(result) ??
        (said instanceof WafersError
          ? said
          : new WafersError(`packing ${shownAs} failed: ${(error as Error)?.message ?? String(error)}`))
      )
    },
    tar: {
      update(part) {
        tarHash.update(part)
        crc = crc32(part, crc)
        length += part.length
      },
    },
  }
}
