/**
 * What a stack of lower layers shows at one path, read from the layers' directories the way
 * overlayfs looks a path up in them, without mounting anything and without following any link.
 * The one lookup diff, build (what nspawn needs in a root) and unpack use.
 */
import {lstatSync} from 'node:fs'
import path from 'node:path'

import {isErrno} from '../errors.js'
import {loadedXattr} from '../host/xattr.js'
import {OVERLAY_FORMS, isOpaqueValue, isWhiteout, opaqueAttribute} from './whiteouts.js'

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
