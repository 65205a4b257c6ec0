import {lstatSync, readlinkSync} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'

const MAX_HOPS = 40

/**
 * Resolves `wanted` (absolute or relative to `/`) inside the tree at `root` as a process chrooted
 * there would, but without the kernel: symlinks met on the way are read and followed *within*
 * `root` (an absolute target starts again at `root`, `..` stops at `root`), so the result is a
 * path under `root` that no symlink leads out of. The last component is followed only when
 * `followLast`. Missing components are kept as they are (for the caller to create).
 */
export function resolveInRoot(root: string, wanted: string, followLast = true): string {
  let pending = split(wanted)
  const done: string[] = []
  let hops = 0
  while (pending.length > 0) {
    const part = pending.shift() as string
    if (part === '..') {
      done.pop()
      continue
    }

    const here = path.join(root, ...done, part)
    if (pending.length === 0 && !followLast) {
      done.push(part)
      break
    }

    let stat
    try {
      stat = lstatSync(here)
    } catch (error) {
      if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) {
        done.push(part)
        continue
      }

      throw error
    }

    if (!stat.isSymbolicLink()) {
      done.push(part)
      continue
    }

    if (++hops > MAX_HOPS) throw new WafersError(`too many symbolic links resolving ${wanted}.`)
    const target = readlinkSync(here)
    if (target.startsWith('/')) done.length = 0
    pending = [...split(target), ...pending]
  }

  return path.join(root, ...done)
}

function split(p: string): string[] {
  return p.split('/').filter((part) => part !== '' && part !== '.')
}

/** `p` made absolute against the working directory `cwd` of the image (both container paths). */
export function containerPath(p: string, cwd: string | undefined): string {
  return path.posix.resolve(cwd || '/', p)
}
