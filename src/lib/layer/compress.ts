/**
 * The compressor every layer wafers packs goes through, run from a thread of its own: the one
 * place that decides a packed blob's bytes after the tar. See docs/oci.md, "Layer tars".
 */
import {promises as fs} from 'node:fs'
import type {FileHandle} from 'node:fs/promises'
import path from 'node:path'
import type {Writable} from 'node:stream'

import {WafersError, asWafersError} from '../errors.js'
import {withUs} from '../host/run.js'

/**
 * gzip by ISA-L's igzip (Debian package isal), level 2, no name or time (`-n`), one thread. It
 * takes about a sixth of the CPU of `pigz -1` for a blob of the same size (bench/RESULTS.md,
 * 2026-12-07). Its output depends on its input and version, not on how the input is cut, and on
 * which of ISA-L's code paths the CPU takes: it hashes with the CRC32 instruction where SSE4.2 is
 * there, and by its code its SSE4.2, AVX and AVX2 paths make the same bytes (checked here on AVX2
 * only; a CPU without SSE4.2, AVX-512's encoder and arm64 are not known to). Threads (`-T`) would
 * change the bytes, so there are none.
 */
export const PACK_COMPRESSOR = {args: ['-2', '-n', '-c'], file: 'igzip', package: 'isal'}

/** Parts of the tar on their way to the compressor: slots of this size, this many. */
const SLOT = 1024 * 1024
const SLOTS = 8

/**
 * The compression itself, on a thread of its own, so that the main thread only walks the wafer:
 * there, the hashes and the pumping of the pipe were a tenth of a cold push, time that the walk
 * and the compressor waited on each other. It starts the compressor with the blob file (fd, a
 * descriptor of this process) as its standard output, writes to it each slot of the shared ring
 * the main thread filled (and hands the slot back once written), hashes the tar (SHA-256 for the
 * diffID, CRC-32 for the trailer check), and once the compressor is gone reads the blob back
 * through one buffer to hash it. The blob never passes through a pipe to Node, whose 64 KiB reads
 * would each be a buffer left for the garbage collector (50 MiB more at the peak). The compressor
 * is started from this thread, so it dies with it (setpriv --pdeathsig follows the thread).
 */
const COMPRESSOR_THREAD = `
const {parentPort, workerData} = require('node:worker_threads')
const {spawn} = require('node:child_process')
const {createHash} = require('node:crypto')
const {readSync} = require('node:fs')
const {crc32} = require('node:zlib')
const {args, fd, file, ring, slot: SLOT} = workerData
const tar = createHash('sha256')
let crc = 0
let length = 0
let reported = false
const report = (outcome) => {
  if (reported) return
  reported = true
  parentPort.postMessage({done: {...outcome, crc: crc >>> 0, length, tar: tar.digest('hex')}})
}
const readBack = () => {
  const blob = createHash('sha256')
  const buffer = Buffer.allocUnsafe(1024 * 1024)
  let size = 0
  for (;;) {
    const read = readSync(fd, buffer, 0, buffer.length, size)
    if (read === 0) break
    blob.update(buffer.subarray(0, read))
    size += read
  }
  const tail = Buffer.alloc(Math.min(8, size))
  readSync(fd, tail, 0, tail.length, size - tail.length)
  return {blob: blob.digest('hex'), size, tail}
}
const child = spawn(file, args, {stdio: ['pipe', fd, 'ignore']})
child.on('error', (error) => report({spawnError: error.code ?? 'failed'}))
child.stdin.on('error', () => {})
child.on('close', (code, signal) => {
  try {
    report({code, signal, ...(code === 0 ? readBack() : {})})
  } catch (error) {
    report({code, readError: {code: error.code, message: error.message}, signal})
  }
})
parentPort.on('message', (message) => {
  if (message.end) child.stdin.end()
  else if (message.kill) child.kill('SIGKILL')
  else if (reported) parentPort.postMessage({free: message.slot})
  else {
    const part = Buffer.from(ring, message.slot * SLOT, message.length)
    tar.update(part)
    crc = crc32(part, crc)
    length += message.length
    child.stdin.write(part, () => parentPort.postMessage({free: message.slot}))
  }
})
`

/** How igzip exits when a write of its output failed (FILE_WRITE_ERROR, -4). */
const WRITE_FAILED = 252

/** What COMPRESSOR_THREAD reports once the compressor is gone. */
interface Outcome {
  blob?: string
  code?: null | number
  crc: number
  length: number
  readError?: {code?: string; message: string}
  signal?: null | string
  size?: number
  spawnError?: string
  tail?: Uint8Array
  tar: string
}

/** A running compression of a tar into a blob file. */
export interface Compression {
  /** Settles when the compressor is gone, however: a writer waiting on `input` stops then. */
  exited: Promise<unknown>
  /** Ends the input, waits for the blob, checks it and syncs the file; its digests and size. */
  finish(): Promise<{diffId: string; digest: string; size: number}>
  /** Takes the tar: what is written here is hashed, compressed and written to the file. */
  input: Writable
  /**
   * Stops the compressor after `error` of the caller's and throws what to tell the user: that
   * the compressor is not installed, or the disk is full, when that is why, else `error` as one
   * sentence.
   */
  stop(error: unknown): Promise<never>
}

/**
 * Starts PACK_COMPRESSOR (see COMPRESSOR_THREAD) writing into the open new file `file`, at its
 * start; `file` is opened for reading too, the blob is hashed from it. igzip exits 0 even when the
 * last write of its output fails, so its exit status cannot vouch for the blob: finish() checks
 * the gzip trailer, which must name the CRC-32 and length of the tar that went in, and says when
 * the file system is full. `names.output` is the file's path, `names.shownAs` names the layer in
 * messages.
 */
export async function startCompression(
  file: FileHandle,
  names: {output: string; shownAs: string},
): Promise<Compression> {
  const {shownAs} = names
  const [{Worker}, {Writable}] = await Promise.all([import('node:worker_threads'), import('node:stream')])
  const started = withUs(PACK_COMPRESSOR.file, PACK_COMPRESSOR.args)
  const ring = new SharedArrayBuffer(SLOT * SLOTS)
  const worker = new Worker(COMPRESSOR_THREAD, {
    eval: true,
    workerData: {args: started.args, fd: file.fd, file: started.file, ring, slot: SLOT},
  })
  const free = Array.from({length: SLOTS}, (_, i) => i)
  let wanted: ((slot: number | undefined) => void) | undefined
  let gone = false
  let outcome: Outcome | undefined
  let threadError: unknown
  let ended: () => void = () => {}
  const exited = new Promise<void>((resolve) => {
    ended = () => {
      gone = true
      wanted?.(undefined)
      resolve()
    }
  })
  worker.on('message', (message: {done?: Outcome; free?: number}) => {
    if (message.free !== undefined) {
      const take = wanted
      wanted = undefined
      if (take) take(message.free)
      else free.push(message.free)
    } else if (message.done) {
      outcome = message.done
      ended()
    }
  })
  worker.once('error', (error) => {
    threadError = error
    ended()
  })
  worker.once('exit', () => ended())

  /** A slot the compressor thread has done with; undefined once it is gone. */
  const slot = async (): Promise<number | undefined> => {
    if (gone) return undefined
    const ready = free.pop()
    if (ready !== undefined) return ready
    return new Promise((resolve) => {
      wanted = resolve
    })
  }

  const view = Buffer.from(ring)
  const send = async (chunk: Buffer): Promise<void> => {
    for (let offset = 0; offset < chunk.length; offset += SLOT) {
      const taken = await slot()
      if (taken === undefined) throw new WafersError(`the compressor of ${shownAs} stopped early.`)
      const length = chunk.copy(view, taken * SLOT, offset, Math.min(chunk.length, offset + SLOT))
      worker.postMessage({length, slot: taken})
    }
  }

  const input = new Writable({
    final(callback) {
      worker.postMessage({end: true})
      callback()
    },
    highWaterMark: SLOT,
    write(chunk: Buffer, _encoding, callback) {
      send(chunk).then(() => callback(), callback)
    },
  })
  input.on('error', () => {}) // a write after the compressor went: finish() or stop() says why

  /**
   * Why the compression failed, when that is not the caller's to say: no compressor, or the blob
   * could not be written. igzip says only that a write failed, so the file system tells whether it
   * is full. A blob cut short by a failed last write, which igzip does not notice (`cut`: the
   * trailer check failed), is a full disk when the file system is full, else not this function's.
   */
  const failure = async (cut = false): Promise<Error | undefined> => {
    const started = outcome?.spawnError
    if (started === 'ENOENT') {
      return new WafersError(
        `packing a layer needs ${PACK_COMPRESSOR.file}, which is not on PATH: install the ${PACK_COMPRESSOR.package} package.`,
      )
    }

    if (started !== undefined) {
      const why = started === 'EACCES' ? ': permission denied (a file system mounted noexec?)' : ''
      return new WafersError(`packing a layer failed: ${PACK_COMPRESSOR.file} could not be started${why}.`)
    }

    const read = outcome?.readError
    if (read === undefined && outcome?.code !== WRITE_FAILED && !cut) return undefined
    const full = await fs.statfs(path.dirname(names.output)).then(
      (stats) => stats.bavail === 0,
      () => false,
    )
    // One sentence naming the blob file (describeSystemError).
    if (full || read) {
      const code = full ? 'ENOSPC' : read?.code
      return asWafersError(
        Object.assign(new Error(read?.message ?? 'a write failed'), {code, path: names.output}),
      ) as Error
    }

    if (cut) return undefined
    return new WafersError(
      `compressing the layer of ${shownAs} failed: ${PACK_COMPRESSOR.file} could not write ${names.output} (a quota used up?).`,
    )
  }

  const exitedWith = (result: Outcome) =>
    new WafersError(
      `compressing the layer of ${shownAs} failed: ${PACK_COMPRESSOR.file} exited with ${result.code ?? result.signal}.`,
    )
  const close = async () => {
    await worker.terminate()
  }

  return {
    exited,
    async finish() {
      if (!input.writableEnded) input.end()
      await exited
      await close()
      const failed = await failure()
      if (failed) throw failed
      if (outcome === undefined) {
        throw new WafersError(
          `compressing the layer of ${shownAs} failed: its thread stopped (${(threadError as Error)?.message ?? 'exited'}).`,
        )
      }

      if (outcome.code !== 0) throw exitedWith(outcome)

      const tail = Buffer.from(outcome.tail ?? [])
      if (
        tail.length < 8 ||
        tail.readUInt32LE(0) !== outcome.crc ||
        tail.readUInt32LE(4) !== outcome.length % 2 ** 32
      ) {
        throw (
          (await failure(true)) ??
          new WafersError(
            `compressing the layer of ${shownAs} failed: ${PACK_COMPRESSOR.file} wrote a blob that does not end with the tar it was given.`,
          )
        )
      }

      await file.sync()
      return {diffId: `sha256:${outcome.tar}`, digest: `sha256:${outcome.blob}`, size: outcome.size ?? 0}
    },
    input,
    async stop(error) {
      // A compressor that was gone before it was stopped is why the caller failed.
      const diedFirst = gone && outcome !== undefined && outcome.code !== 0
      if (!gone) {
        worker.postMessage({kill: true})
        await exited
      }

      await close()
      const said = asWafersError(error) // a system error as one sentence
      throw (
        (await failure()) ??
        (diedFirst ? exitedWith(outcome!) : undefined) ??
        (said instanceof WafersError
          ? said
          : new WafersError(`packing ${shownAs} failed: ${(error as Error)?.message ?? String(error)}`))
      )
    },
  }
}
