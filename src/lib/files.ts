import {closeSync, constants, fstatSync, openSync, readSync, renameSync, unlinkSync, writeSync} from 'node:fs'
import {randomBytes} from 'node:crypto'
import path from 'node:path'

import {WafersError, isErrno} from './errors.js'

/** The largest store file wafers reads whole (parent, meta.json): a hostile one cannot exhaust memory. */
export const MAX_STORE_FILE = 1024 * 1024

/**
 * Reads a small file that someone else may have planted, as text: never through a symlink, never
 * blocking on a FIFO or device, never more than `max` bytes. Undefined when it does not exist.
 * Synchronous on purpose: listing 10,000 wafers reads as many tiny files, and each async read is
 * four trips through libuv's thread pool. `what` names the file in errors ("the parent file of wafer x").
 */
export function readStoreFile(file: string, what: string, max = MAX_STORE_FILE): string | undefined {
  let fd: number
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
  } catch (error) {
    if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) return undefined
    if (isErrno(error, 'ELOOP')) throw new WafersError(`${what} is a symlink; wafers does not follow it.`)
    if (isErrno(error, 'EISDIR')) throw new WafersError(`${what} is a directory.`)
    if (isErrno(error, 'EACCES') || isErrno(error, 'EPERM'))
      throw new WafersError(`${what} cannot be read: permission denied.`)
    throw error
  }

  try {
    const stat = fstatSync(fd)
    if (stat.isDirectory()) throw new WafersError(`${what} is a directory.`)
    if (!stat.isFile()) throw new WafersError(`${what} is not a regular file.`)
    if (stat.size > max) throw new WafersError(`${what} is ${stat.size} bytes, more than the ${max} wafers reads.`)
    const buffer = Buffer.alloc(Math.min(max + 1, Math.max(stat.size, 4096)))
    let length = 0
    for (;;) {
      const n = readSync(fd, buffer, length, buffer.length - length, null)
      if (n === 0) break
      length += n
      if (length > max) throw new WafersError(`${what} is more than the ${max} bytes wafers reads.`)
      if (length === buffer.length) break
    }

    return buffer.subarray(0, length).toString('utf8')
  } finally {
    closeSync(fd)
  }
}

/**
 * Replaces `file` with `content` atomically: written to an exclusive, unpredictable temporary name
 * beside it (never through a symlink), then renamed over it.
 */
export function writeFileAtomic(file: string, content: string | Buffer, mode = 0o644): void {
  const temporary = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`)
  const fd = openSync(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode)
  try {
    const bytes = typeof content === 'string' ? Buffer.from(content) : content
    let written = 0
    while (written < bytes.length) written += writeSync(fd, bytes, written)
  } catch (error) {
    closeSync(fd)
    unlinkSync(temporary)
    throw error
  }

  closeSync(fd)
  try {
    renameSync(temporary, file)
  } catch (error) {
    unlinkSync(temporary)
    throw error
  }
}
