/**
 * What a stack of lower layers shows at one path, read from the layers' directories the way
 * overlayfs looks a path up in them, without mounting anything and without following any link.
 * The one lookup diff, build (what nspawn needs in a root) and unpack use.
 */
import {type BigIntStats, closeSync, constants, lstatSync, openSync} from 'node:fs'
import path from 'node:path'

import {isErrno} from '../errors.js'
import {fdPath as at} from '../host/files.js'
import {loadedXattr} from '../host/xattr.js'
import {OVERLAY_FORMS, isOpaqueValue, isWhiteout, opaqueAttribute} from './whiteouts.js'
import {packedAttribute} from './xattrs.js'

/** What the merged layers show at one path. */
export type Below =
  /** A directory, made of these directories of the layers (nearest first), as overlayfs merges them. */
  | {dirs: string[]; kind: 'dir'}
  /** Nothing: never there, whited out, hidden by an opaque directory, or under something missing. */
  | {kind: 'none'}
  /** Something that is not a directory (a file, a link, a device), or a path under one. */
  | {kind: 'other'}

/**
 * What `lowers` (directories at one path, nearest first: a stack's data directories, or the
 * `dirs` of an earlier lookup) merged show at `relPath` (relative, `/`-separated), as overlayfs
 * looks it up one component at a time: a whiteout ends the search with nothing, a non-directory
 * ends it with itself if nearer than any directory, an opaque directory (in either attribute
 * form) ends it after itself. No link is followed: a path under a link is `other`. Synchronous
 * (lstat and getxattr are cheap and need no thread pool); the xattr binding must have been loaded
 * (host/xattr.ts loadXattr) before.
 */
export function lookup(lowers: readonly string[], relPath: string): Below {
  const parts = relPath.split('/').filter((part) => part !== '' && part !== '.')
  let dirs = [...lowers]
  for (const part of parts) {
    const found = lookupName(dirs, part)
    if (found.kind !== 'dir') return found
    dirs = found.dirs
  }

  return dirs.length > 0 ? {dirs, kind: 'dir'} : {kind: 'none'}
}

/** One component looked up in the merged `dirs`. */
function lookupName(dirs: readonly string[], name: string): Below {
  const found: string[] = []
  for (const dir of dirs) {
    const file = path.join(dir, name)
    const stat = lstatOrUndefined(file)
    if (stat === undefined) continue
    if (isWhiteout(stat)) break
    if (!stat.isDirectory()) {
      if (found.length === 0) return {kind: 'other'}
      break
    }

    found.push(file)
    if (isOpaqueDir(file)) break
  }

  return found.length > 0 ? {dirs: found, kind: 'dir'} : {kind: 'none'}
}

/**
 * Whether directory `dir` is marked opaque in either form: `trusted.overlay.opaque` (wafers' own
 * mounts) or `user.overlay.opaque` (what a `userxattr` mount's copy-ups write). Needs the xattr
 * binding loaded (loadXattr); an attribute that cannot be read counts as no mark.
 */
export function isOpaqueDir(dir: string): boolean {
  const xattr = loadedXattr()
  if (xattr === undefined) throw new Error('isOpaqueDir needs loadXattr() to have finished first.')
  return OVERLAY_FORMS.some((form) => {
    try {
      return isOpaqueValue(xattr.getAttributeSync(dir, opaqueAttribute(form)))
    } catch {
      return false
    }
  })
}

function lstatOrUndefined(file: string) {
  try {
    return lstatSync(file, {throwIfNoEntry: false})
  } catch (error) {
    if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) return undefined
    throw error
  }
}

/*
 * The same lookup for one entry, with what unpack needs of it (its lstat and attributes), walked
 * one descriptor per component with O_NOFOLLOW|O_DIRECTORY through /proc/self/fd, so a symlink in
 * a lower is never followed. Unpack gives a parent a tar does not list the owner, mode, time and
 * attributes the layers below show there.
 */
export interface Found {
  stat: BigIntStats
  /** Its extended attributes as stored in the layer, overlay's own markers left out. */
  xattrs: [string, Buffer][]
  /** The index in `lowers` of the layer it was found in. */
  layer: number
}

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW

/**
 * The file at `relPath` (components separated by '/', '' for the top) in the stack of layers
 * `lowers` (data directories, nearest first), or undefined when no layer shows one there. Reads
 * attributes only when the xattr binding was loaded (loadXattr()); else `xattrs` is empty.
 */
export function findBelow(lowers: readonly string[], relPath: Buffer | string): Found | undefined {
  const rel = typeof relPath === 'string' ? Buffer.from(relPath) : relPath
  const parts: Buffer[] = []
  for (let offset = 0; offset < rel.length;) {
    let slash = rel.indexOf(0x2f, offset)
    if (slash === -1) slash = rel.length
    if (slash > offset) parts.push(rel.subarray(offset, slash))
    offset = slash + 1
  }

  const xattr = loadedXattr()
  const opaque = (fd: number) =>
    OVERLAY_FORMS.some((form) => isOpaqueValue(xattr?.getAttributeSync(at(fd).toString(), opaqueAttribute(form))))
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
