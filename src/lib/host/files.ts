/**
 * Files wafers did not make (in the store, a layout, /proc): read small and whole without following
 * a symlink or blocking on a FIFO, and written atomically.
 */
import {
  closeSync,
  constants,
  promises as fs,
  fstatSync,
  openSync,
  readSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs'
import {spawnSync} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {run, systemProgram, withUs} from './run.js'

/** The largest store file wafers reads whole (parent, meta.json): a hostile one cannot exhaust memory. */
export const MAX_STORE_FILE = 1024 * 1024

/**
 * Reads a small file that someone else may have planted, as text: never through a symlink, never
 * blocking on a FIFO or device, never more than `max` bytes. Undefined when it does not exist.
 * Synchronous on purpose: listing 10,000 wafers reads as many tiny files, and each async read is
 * four trips through libuv's thread pool. `what` names the file in errors ("the parent file of wafer x").
 */
export function readStoreFile(file: string, what: string, max = MAX_STORE_FILE): string | undefined {
  const opened = openStoreFile(file, what, (size) => {
    if (size > max) throw new WafersError(`${what} is ${size} bytes, more than the ${max} wafers reads.`)
  })
  if (opened === undefined) return undefined
  try {
    const bytes = readUpTo(opened.fd, max + 1, opened.size + 1)
    if (bytes.length > max) throw new WafersError(`${what} is more than the ${max} bytes wafers reads.`)
    return bytes.toString('utf8')
  } finally {
    closeSync(opened.fd)
  }
}

/**
 * Reads a small file whole, as readStoreFile opens it: at most `max` bytes (or exactly `size`
 * bytes when given), and never more than its size when opened, should it grow meanwhile.
 * Undefined when it does not exist.
 */
export function readSmallFile(file: string, what: string, max: number, size?: number): Buffer | undefined {
  const opened = openStoreFile(file, what, (actual) => {
    if (size !== undefined && actual !== size)
      throw new WafersError(`${what} is ${actual} bytes, not the ${size} its descriptor says.`)
    if (actual > max) throw new WafersError(`${what} is ${actual} bytes, more than the ${max} wafers reads.`)
  })
  if (opened === undefined) return undefined
  try {
    return readUpTo(opened.fd, opened.size, opened.size)
  } finally {
    closeSync(opened.fd)
  }
}

/**
 * The first `max` bytes of a /proc file as text (its size says 0: it is read to its end), opened as
 * readStoreFile opens a file; undefined when it cannot be read (the process is gone, say).
 */
export function readProcFile(file: string, max = 4096): string | undefined {
  try {
    const opened = openStoreFile(file, file, () => {})
    if (opened === undefined) return undefined
    try {
      return readUpTo(opened.fd, max, 0).toString('utf8')
    } finally {
      closeSync(opened.fd)
    }
  } catch {
    return undefined
  }
}

/**
 * Opens for reading a file someone else may have planted (in the store, a layout, `$WAFERS/.oci`).
 * The name is opened with O_PATH|O_NOFOLLOW: no symlink is followed, and no device, FIFO or socket
 * is ever opened (an open can have side effects, such as arming a watchdog). It must be a regular
 * file, and `check` judges its size; only then is that very inode reopened through /proc/self/fd,
 * non-blocking, even if the name was swapped since. Undefined when it does not exist; the caller
 * closes the descriptor.
 */
export function openStoreFile(
  file: string,
  what: string,
  check: (size: number) => void,
): undefined | {fd: number; size: number} {
  let handle: number
  try {
    handle = openSync(file, O_PATH | constants.O_NOFOLLOW)
  } catch (error) {
    if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) return undefined
    if (isErrno(error, 'EACCES') || isErrno(error, 'EPERM'))
      throw new WafersError(`${what} cannot be read: permission denied.`)
    throw new WafersError(`${what} cannot be opened (${errnoCode(error)}).`)
  }

  try {
    const stat = fstatSync(handle)
    if (stat.isSymbolicLink()) throw new WafersError(`${what} is a symlink; wafers does not follow it.`)
    if (stat.isDirectory()) throw new WafersError(`${what} is a directory.`)
    if (!stat.isFile()) throw new WafersError(`${what} is not a regular file.`)
    check(stat.size)
    return {fd: openSync(`/proc/self/fd/${handle}`, constants.O_RDONLY | constants.O_NONBLOCK), size: stat.size}
  } finally {
    closeSync(handle)
  }
}

/** O_PATH (Linux): Node's fs.constants does not carry it. */
const O_PATH = 0o10000000

/** At most `limit` bytes from `fd`, read to its end; `size` is what it is expected to hold, to read it in one go. */
function readUpTo(fd: number, limit: number, size: number): Buffer {
  let buffer = Buffer.alloc(Math.min(limit, Math.max(size, 4096)))
  let length = 0
  while (length < limit) {
    if (length === buffer.length) {
      const grown = Buffer.alloc(Math.min(limit, buffer.length * 2))
      buffer.copy(grown)
      buffer = grown
    }

    const n = readSync(fd, buffer, length, buffer.length - length, null)
    if (n === 0) break
    length += n
  }

  return buffer.subarray(0, length)
}

function errnoCode(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? 'unknown error'
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

/** Removes file `file` (a link itself, never what it names); false when it was not there. */
export async function unlinkIfPresent(file: string): Promise<boolean> {
  try {
    await fs.unlink(file)
    return true
  } catch (error) {
    if (isErrno(error, 'ENOENT')) return false
    throw error
  }
}

/**
 * Deletes `file` and, when it is a directory, all it holds, however deep: GNU rm walks the tree
 * by descriptor, so no path needs to fit in PATH_MAX (Node's recursive rm goes by whole paths and
 * fails with ENAMETOOLONG past it, on a layer 2,040 directories deep). Never follows a symlink
 * and never enters another file system mounted inside (--one-file-system); a bind mount of the
 * same file system it does enter, so callers make sure nothing is mounted inside first. A `file`
 * already gone is no error. A failure is rm's own sentence (see run).
 */
export async function removeTree(file: string): Promise<void> {
  // rm by systemProgram (absolute directories of PATH, then the system's own), not a seeder's PATH.
  await run(systemProgram('rm'), ['-rf', '--one-file-system', '--', file])
}

/**
 * The path of `name` in the directory this process holds open as `fd` (the directory itself
 * without a name), through /proc/self/fd: reached without its path, so no name on the way is
 * looked up again. Bytes, since a layer's names need not be UTF-8.
 */
export function fdPath(fd: number, name?: Buffer): Buffer {
  return name === undefined
    ? Buffer.from(`/proc/self/fd/${fd}/.`)
    : Buffer.concat([Buffer.from(`/proc/self/fd/${fd}/`), name])
}

/** A node mknodAt makes: a FIFO, or a character or block device and its numbers. */
export interface NodeSpec {
  devmajor: number
  devminor: number
  mode: number
  type: 'block' | 'char' | 'fifo'
}

/**
 * Makes FIFO or device `name` in the directory this process holds open as `dirFd`, by a child
 * `mkfifo` or `mknod` (Node has neither), which dies with wafers like every program it starts
 * (withUs) and names the directory as /proc/<our pid>/fd/N. Returns undefined once made, else why
 * not: the program missing, or the first line it said.
 */
export function mknodAt(dirFd: number, name: string, spec: NodeSpec): undefined | {missing?: string; said?: string} {
  const target = `/proc/${process.pid}/fd/${dirFd}/${name}`
  const mode = (spec.mode & 0o7777).toString(8)
  const [command, args] =
    spec.type === 'fifo'
      ? ['mkfifo', ['-m', mode, '--', target]]
      : [
          'mknod',
          ['-m', mode, '--', target, spec.type === 'block' ? 'b' : 'c', String(spec.devmajor), String(spec.devminor)],
        ]
  const wrapped = withUs(command, args)
  const result = spawnSync(wrapped.file, wrapped.args, {encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe']})
  if (result.error && isErrno(result.error, 'ENOENT')) return {missing: command}
  if (result.status === 0) return undefined
  const said = (result.stderr ?? '')
    .trim()
    .split('\n')[0]
    ?.replace(/^[a-z]+: /, '')
    .replace(/\.$/, '')
  return {
    said:
      said || `${command} ${result.signal ? `was killed by ${result.signal}` : `exited with code ${result.status}`}`,
  }
}
