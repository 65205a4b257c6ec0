/**
 * Unpacking a layer while skopeo downloads it. skopeo's OCI layout destination writes each blob
 * into a temporary file of the layout (`oci-put-blob` and digits), checks its digest, and renames
 * it into blobs/sha256/ when it is whole. A pull that downloads one layer reads that file as it
 * grows, so unpacking goes on beside the download instead of after it. What is read proves nothing
 * by itself: the unpack checks the blob's digest and diff ID as always, and a file that stops
 * short, or holds another blob, fails that check; the pull then unpacks the finished blob instead.
 * The layout is the pull's own work directory (0700, root's), and the file is skopeo's, a child
 * of this pull: nothing another user could plant, and it is opened without following a link,
 * without blocking, and read only as far as the layer's size.
 */
import {constants, promises as fs} from 'node:fs'
import type {FileHandle} from 'node:fs/promises'
import path from 'node:path'
import {Readable} from 'node:stream'
import {setTimeout as sleep} from 'node:timers/promises'

import type {LayerCompression} from '../layer/archive.js'
import type {Descriptor} from './image.js'
import {sniffCompression} from './layout.js'

const TEMPORARY = /^oci-put-blob\d+$/
/** How often a reader that caught up with the download looks again. */
const POLL_MS = 20

/** A blob being downloaded: a stream of its bytes as they come, and the compression they show. */
export interface GrowingBlob {
  compression: LayerCompression
  input: Readable
}

/**
 * The blob `descriptor` that skopeo is writing into `layout`, once its file appears there and its
 * first bytes are in (their compression, `said` by the media type for an empty blob). Undefined
 * when the download ended (`finished`) or `signal` stopped before that. The stream ends after `descriptor.size` bytes, and fails when the download ended with
 * fewer: the caller then unpacks the downloaded blob as usual.
 */
export async function growingBlob(
  layout: string,
  descriptor: Descriptor,
  {finished, said, signal}: {finished: () => boolean; said: LayerCompression; signal: AbortSignal},
): Promise<GrowingBlob | undefined> {
  let file: FileHandle | undefined
  while (file === undefined) {
    if (finished() || signal.aborted) return undefined
    file = await openTemporary(layout)
    if (file === undefined) await sleep(POLL_MS)
  }

  try {
    const head = Buffer.alloc(Math.min(4, descriptor.size))
    for (let got = 0; got < head.length;) {
      const {bytesRead} = await file.read(head, got, head.length - got, got)
      got += bytesRead
      if (bytesRead > 0) continue
      if (finished() || signal.aborted) {
        await file.close()
        return undefined
      }

      await sleep(POLL_MS)
    }

    return {compression: sniffCompression(head, said), input: tail(file, descriptor.size, finished, signal)}
  } catch (error) {
    await file.close()
    throw error
  }
}

/** The temporary blob file skopeo made in `layout`, opened; undefined while there is none. */
async function openTemporary(layout: string): Promise<FileHandle | undefined> {
  const names = await fs.readdir(layout).catch(() => [])
  const name = names.find((entry) => TEMPORARY.test(entry))
  if (name === undefined) return undefined
  const file = await fs
    .open(path.join(layout, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    .catch(() => undefined)
  if (file === undefined) return undefined
  const stat = await file.stat()
  if (!stat.isFile() || stat.uid !== process.getuid?.()) {
    await file.close()
    return undefined
  }

  return file
}

/** The bytes of `file` from its start to `size`, read as they are written. */
function tail(file: FileHandle, size: number, finished: () => boolean, signal: AbortSignal): Readable {
  let offset = 0
  let closed = false
  const close = async () => {
    if (closed) return
    closed = true
    await file.close().catch(() => {})
  }

  return new Readable({
    async destroy(error, callback) {
      await close()
      callback(error)
    },
    highWaterMark: 1024 * 1024,
    async read(wanted) {
      try {
        for (;;) {
          if (offset >= size) {
            await close()
            this.push(null)
            return
          }

          if (signal.aborted) throw new Error('the pull was stopped')
          // Whether the download had ended before this read: then a read that finds nothing new
          // means the file will grow no more.
          const ended = finished()
          const buffer = Buffer.allocUnsafe(Math.min(Math.max(wanted, 64 * 1024), size - offset))
          const {bytesRead} = await file.read(buffer, 0, buffer.length, offset)
          if (bytesRead > 0) {
            offset += bytesRead
            this.push(buffer.subarray(0, bytesRead))
            return
          }

          if (ended) throw new Error(`the download ended after ${offset} of its ${size} bytes`)
          await sleep(POLL_MS)
        }
      } catch (error) {
        this.destroy(error as Error)
      }
    },
  })
}
