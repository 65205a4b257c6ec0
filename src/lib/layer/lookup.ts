/**
 * What a path is in a chain of layers as overlayfs would show it, read from their data
 * directories without mounting them: the nearest layer that has the path wins, a whiteout (0/0
 * character device) deletes it, a file hides whatever is below it, an opaque directory hides the
 * layers below it. Every component is opened with O_NOFOLLOW|O_DIRECTORY through /proc/self/fd,
 * so a symlink in a lower is never followed.
 */
import {type BigIntStats, closeSync, constants, lstatSync, openSync} from 'node:fs'

import {isErrno} from '../errors.js'
import {loadedXattr} from '../host/xattr.js'
import {isOpaqueValue, isWhiteout, opaqueAttribute} from './whiteouts.js'
import {packedAttribute} from './xattrs.js'

export interface Found {
  stat: BigIntStats
  /** Its extended attributes as stored in the layer, overlay's own markers left out. */
  xattrs: [string, Buffer][]
  /** The index in `lowers` of the layer it was found in. */
  layer: number
}

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW

function at(fd: number, name?: Buffer): Buffer {
  return name === undefined
    ? Buffer.from(`/proc/self/fd/${fd}/.`)
    : Buffer.concat([Buffer.from(`/proc/self/fd/${fd}/`), name])
}

/**
 * The file at `relPath` (components separated by '/', '' for the top) in the stack of layers
 * `lowers` (data directories, nearest first), or undefined when no layer shows one there. Reads
 * attributes only when the xattr binding was loaded (loadXattr()); else `xattrs` is empty.
 */
export function lookup(lowers: readonly string[], relPath: Buffer | string): Found | undefined {
  const rel = typeof relPath === 'string' ? Buffer.from(relPath) : relPath
  const parts: Buffer[] = []
  for (let offset = 0; offset < rel.length;) {
    let slash = rel.indexOf(0x2f, offset)
    if (slash === -1) slash = rel.length
    if (slash > offset) parts.push(rel.subarray(offset, slash))
    offset = slash + 1
  }

  const xattr = loadedXattr()
  const opaque = (fd: number) => isOpaqueValue(xattr?.getAttributeSync(at(fd).toString(), opaqueAttribute()))
  for (const [layer, lower] of lowers.entries()) {
    let fd: number
    try {
      fd = openSync(lower, DIR_FLAGS)
    } catch (error) {
      if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR') || isErrno(error, 'ELOOP')) continue
      throw error
    }

    try {
      let hides = opaque(fd)
      const found = ((): Found | 'deleted' | 'missing' => {
        if (parts.length === 0) return {layer, stat: lstatSync(at(fd), {bigint: true}), xattrs: attributes(at(fd))}
        for (const [i, name] of parts.entries()) {
          let stat: BigIntStats
          try {
            stat = lstatSync(at(fd, name), {bigint: true})
          } catch (error) {
            if (isErrno(error, 'ENOENT')) return 'missing'
            throw error
          }

          if (isWhiteout(stat)) return 'deleted'
          if (i === parts.length - 1) return {layer, stat, xattrs: attributes(at(fd, name))}
          if (!stat.isDirectory()) return 'deleted'
          const next = openSync(at(fd, name), DIR_FLAGS)
          closeSync(fd)
          fd = next
          hides ||= opaque(fd)
        }

        return 'missing'
      })()
      if (found === 'deleted') return undefined
      if (found !== 'missing') return found
      if (hides) return undefined
    } finally {
      closeSync(fd)
    }
  }

  return undefined

  function attributes(file: Buffer): [string, Buffer][] {
    if (!xattr) return []
    const name = file.toString('utf8')
    // The binding takes strings: a name that is not UTF-8 cannot be named to it (rare; left bare).
    if (!Buffer.from(name).equals(file)) return []
    const out: [string, Buffer][] = []
    for (const key of xattr.listAttributesSync(name)) {
      if (packedAttribute(key).action !== 'keep') continue
      const value = xattr.getAttributeSync(name, key)
      if (value !== null) out.push([key, value])
    }

    return out
  }
}
