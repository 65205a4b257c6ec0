/**
 * A layer systemd's `importctl pull-oci` unpacked (`$STACKS/.oci-sha256:HEX`), taken into a
 * wafer's data without copying a byte of any file: every file, symlink and device is hard-linked
 * (the same inode, so the same data, owner, mode and attributes), every directory is made anew (so
 * wafers' markers go on wafers' directories, never on importctl's). importctl's tree stays as it
 * is: its own .mstack keeps working, and removing it later leaves the wafer whole.
 *
 * What systemd writes differs by version, and each form becomes wafers' own (whiteouts.ts):
 * - systemd 262 keeps an OCI whiteout as the tar had it, a plain file `.wh.NAME` (and
 *   `.wh..wh..opq`), which no overlay mount acts on: it becomes a whiteout device at NAME (unless
 *   NAME is in the same layer: a whiteout hides only what is below), an opaque mark in both forms.
 * - later systemd (tar-util.c with TAR_OCI_WHITEOUTS) writes an empty file with
 *   `user.overlay.whiteout` in a directory marked `user.overlay.opaque=x`, and `user.overlay.opaque=y`
 *   for an opaque one, which only `userxattr` mounts read: the file becomes a whiteout device, the
 *   `x` mark goes, the `y` mark gets its trusted twin.
 * - a whiteout device stays one.
 * systemd makes a parent the tar does not list itself, 0700 root:root, and never sets its time;
 * wafers' unpack gives such a parent what the layers below have there (else 0755 0:0, time 0),
 * and so does this, for a directory of that shape changed since systemd began the layer.
 *
 * systemd applies attributes from the tar as they are, where wafers' unpack escapes overlay ones
 * (xattrs.ts): a layer with an overlay attribute of its own on a shared inode cannot be made
 * right without changing importctl's copy, and is refused (LayerNotTaken), as is one on another
 * file system (hard links cannot cross one) or owned by the foreign UID range.
 */
import {randomBytes} from 'node:crypto'
import {
  type BigIntStats,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  fstatSync,
  futimesSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  lstatSync,
  unlinkSync,
} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno, quote} from '../errors.js'
import {fdPath as at, mknodAt} from '../host/files.js'
import {type Xattr, loadXattr} from '../host/xattr.js'
import {findBelow} from './lookup.js'
import {utimesSeconds} from './unpack.js'
import {
  AUFS_META_PREFIX,
  OPAQUE_VALUE,
  OPAQUE_WHITEOUT,
  OVERLAY_FORMS,
  WHITEOUT_PREFIX,
  isWhiteout,
  opaqueAttribute,
  overlayPrefix,
} from './whiteouts.js'

/**
 * Why a layer importctl unpacked cannot become a wafer as it is (a pull downloads it instead):
 * `reason` alone, the message with what `wafers adopt` can do instead.
 */
export class LayerNotTaken extends WafersError {
  constructor(
    readonly reason: string,
    advice = 'pull the image with wafers instead',
  ) {
    super(`${reason}; ${advice}.`)
  }
}

/**
 * Refuses (LayerNotTaken) files in `$STACKS` that root alone could not have made: wafers takes
 * importctl's files as they are, on the word of who made them, so `dir` and the directory it is
 * in must be root's and written by nobody else (as importd keeps /var/lib/machines). `opened`, the
 * descriptor `dir` was opened as, is what is checked of `dir` itself when given: not its name again.
 */
export function checkRootsAlone(dir: string, what: string, opened?: number): void {
  for (const file of [path.dirname(dir), dir]) {
    const stat = file === dir && opened !== undefined ? fstatSync(opened) : lstatSync(file, {throwIfNoEntry: false})
    if (stat === undefined) continue
    if (stat.uid !== 0 || (stat.mode & 0o022) !== 0) {
      throw new LayerNotTaken(
        `${what}: ${file} is not root's alone (owner ${stat.uid}, mode ${(stat.mode & 0o7777).toString(8).padStart(4, '0')}), and wafers takes importctl's files only from root`,
      )
    }
  }
}

/** What taking a layer in did. */
export interface TakenLayer {
  /** Directories made (the only new inodes, with the whiteout devices). */
  directories: number
  /** Files, symlinks and devices hard-linked from importctl's copy. */
  linked: number
  /** Whiteouts made from systemd's `.wh.` files or `user.overlay.whiteout` files. */
  whiteouts: number
}

/** The first UID of systemd's foreign UID range (0x7FFE0000), which importctl uses for unprivileged images. */
export const FOREIGN_UID_BASE = 0x7f_fe_00_00

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW
const XATTR_WHITEOUT = `${overlayPrefix('user')}whiteout`
/** The value systemd gives a directory that holds xattr whiteouts (and is not opaque). */
const HOLDS_WHITEOUTS = 'x'

/** A directory of the walk: the source and the new one held open, and what to set once its entries are in. */
interface Level {
  dest: number
  meta: {gid: number; mode: number; mtimeNs: bigint; uid: number}
  names: Array<{kind: 'dir' | 'other'; name: Buffer}>
  rel: Buffer
  source: number
}

/**
 * Makes `data` (an empty directory, the new wafer's) hold the layer importctl unpacked at `source`,
 * in wafers' on-disk form, with `lowers` (the data of the wafers below, nearest first) giving the
 * parents the layer does not list. `what` names the layer in refusals. Walks both trees by file
 * descriptor, one component at a time, never following a symlink. Throws LayerNotTaken, before
 * or while `data` is filled (the caller discards it), when the layer cannot be taken as it is.
 */
export async function takeImportedLayer(
  source: string,
  data: string,
  lowers: readonly string[],
  what: string,
): Promise<TakenLayer> {
  const xattr = await loadXattr()
  const taken: TakenLayer = {directories: 0, linked: 0, whiteouts: 0}
  const rootFd = openSync(source, DIR_FLAGS)
  const dataFd = openSync(data, DIR_FLAGS)
  const stack: Level[] = []
  const whiteout = new WhiteoutMaker(dataFd, what)
  try {
    const root = fstatSync(rootFd, {bigint: true})
    if (root.uid >= FOREIGN_UID_BASE) {
      throw new LayerNotTaken(
        `${what} is owned by systemd's foreign UID range (${root.uid}), not by the users of the image`,
        'pull it again with wafers',
      )
    }

    checkRootsAlone(source, what, rootFd)
    if (root.dev !== fstatSync(dataFd, {bigint: true}).dev) throw notSameFileSystem(what)
    const started = root.birthtimeNs
    const enter = (sourceFd: number, destFd: number, rel: Buffer, stat: BigIntStats) => {
      const names: Level['names'] = []
      const present = new Set<string>()
      const hidden: Buffer[] = []
      let opaque = dirAttributes(xattr, sourceFd, destFd, rel, what)
      const entries = readdirSync(`/proc/self/fd/${sourceFd}`, {encoding: 'buffer', withFileTypes: true})
      for (const entry of entries) present.add((entry.name as unknown as Buffer).toString('latin1'))
      for (const entry of entries) {
        const name = entry.name as unknown as Buffer
        const text = name.toString('latin1')
        if (entry.isDirectory()) {
          names.push({kind: 'dir', name})
        } else if (entry.isFile() && text === OPAQUE_WHITEOUT) {
          opaque = true
        } else if (entry.isFile() && text.startsWith(AUFS_META_PREFIX)) {
          // aufs metadata (.wh..wh.plnk and such): no wafer keeps it, as unpack drops it.
        } else if (entry.isFile() && text.startsWith(WHITEOUT_PREFIX) && text.length > WHITEOUT_PREFIX.length) {
          const target = name.subarray(WHITEOUT_PREFIX.length)
          // A whiteout hides only what is below: a file of the same name in this layer stays.
          if (!present.has(target.toString('latin1'))) hidden.push(target)
        } else {
          names.push({kind: 'other', name})
        }
      }

      for (const target of hidden) {
        whiteout.at(destFd, target)
        taken.whiteouts++
      }

      if (opaque) {
        for (const form of OVERLAY_FORMS)
          xattr.setAttributeSync(at(destFd).toString(), opaqueAttribute(form), OPAQUE_VALUE)
      }

      const meta = impliedDirectory(xattr, sourceFd, stat, started, rel)
        ? belowOrDefault(xattr, destFd, lowers, rel)
        : {gid: Number(stat.gid), mode: Number(stat.mode & 0o7777n), mtimeNs: stat.mtimeNs, uid: Number(stat.uid)}
      fchownSync(destFd, meta.uid, meta.gid)
      stack.push({dest: destFd, meta, names, rel, source: sourceFd})
    }

    enter(rootFd, dataFd, Buffer.alloc(0), root)
    while (stack.length > 0) {
      const top = stack.at(-1)!
      const next = top.names.pop()
      if (next === undefined) {
        stack.pop()
        // The shared whiteout's hidden name goes before the top's time is set.
        if (stack.length === 0) whiteout.dispose()
        fchmodSync(top.dest, top.meta.mode)
        // To the µs, as unpack sets a directory's time and a pack reads it back (see utimesSeconds).
        const seconds = utimesSeconds(top.meta.mtimeNs)
        futimesSync(top.dest, seconds, seconds)
        if (top.source !== rootFd) closeSync(top.source)
        if (top.dest !== dataFd) closeSync(top.dest)
        continue
      }

      const rel = top.rel.length === 0 ? next.name : Buffer.concat([top.rel, Buffer.from('/'), next.name])
      const from = at(top.source, next.name)
      const stat = lstatSync(from, {bigint: true})
      if (next.kind === 'other' || !stat.isDirectory()) {
        takeFile({taken, what, whiteout, xattr}, top.dest, next.name, from, stat, rel)
        continue
      }

      const sourceFd = openSync(from, DIR_FLAGS)
      mkdirSync(at(top.dest, next.name), 0o700)
      const destFd = openSync(at(top.dest, next.name), DIR_FLAGS)
      taken.directories++
      try {
        enter(sourceFd, destFd, rel, fstatSync(sourceFd, {bigint: true}))
      } catch (error) {
        closeSync(sourceFd)
        closeSync(destFd)
        throw error
      }
    }
  } catch (error) {
    if (isErrno(error, 'EXDEV')) throw notSameFileSystem(what)
    throw error
  } finally {
    whiteout.dispose()
    for (const level of stack) {
      if (level.source !== rootFd) closeSync(level.source)
      if (level.dest !== dataFd) closeSync(level.dest)
    }

    closeSync(rootFd)
    closeSync(dataFd)
  }

  return taken
}

function notSameFileSystem(what: string): LayerNotTaken {
  return new LayerNotTaken(
    `${what} is on another file system than WAFERS, and its files are hard-linked, never copied`,
    'keep WAFERS and STACKS on one file system',
  )
}

/** Hard-links one non-directory, or makes a whiteout of systemd's xattr form; refuses overlay attributes of its own. */
function takeFile(
  {taken, what, whiteout, xattr}: {taken: TakenLayer; what: string; whiteout: WhiteoutMaker; xattr: Xattr},
  destFd: number,
  name: Buffer,
  from: Buffer,
  stat: BigIntStats,
  rel: Buffer,
): void {
  const names = attributeNames(xattr, from)
  if (stat.isFile() && stat.size === 0n && names.includes(XATTR_WHITEOUT)) {
    whiteout.at(destFd, name)
    taken.whiteouts++
    return
  }

  const overlay = names.find((attribute) => isOverlayAttribute(attribute))
  if (overlay !== undefined) throw overlayAttributeOf(rel, overlay, what)
  if (isWhiteout(stat)) taken.whiteouts++
  else taken.linked++
  linkSync(from, at(destFd, name))
}

/**
 * Gives the new directory the source's attributes in wafers' form and says whether the source is
 * marked opaque (`user.overlay.opaque=y`); drops systemd's `x` mark; refuses other overlay ones.
 */
function dirAttributes(xattr: Xattr, sourceFd: number, destFd: number, rel: Buffer, what: string): boolean {
  const from = at(sourceFd)
  let opaque = false
  for (const name of attributeNames(xattr, from)) {
    const value = xattr.getAttributeSync(from.toString(), name)
    if (value === null) continue
    if (name === opaqueAttribute('user')) {
      const mark = value.toString('latin1')
      if (mark === OPAQUE_VALUE) opaque = true
      else if (mark !== HOLDS_WHITEOUTS) throw overlayAttributeOf(rel, name, what)
      continue
    }

    if (isOverlayAttribute(name)) throw overlayAttributeOf(rel, name, what)
    xattr.setAttributeSync(at(destFd).toString(), name, value)
  }

  return opaque
}

function attributeNames(xattr: Xattr, file: Buffer): string[] {
  const name = file.toString('utf8')
  // The binding takes strings: a name that is not UTF-8 cannot be asked (as lookup.ts, left bare).
  if (!Buffer.from(name).equals(file)) return []
  return xattr.listAttributesSync(name)
}

function isOverlayAttribute(name: string): boolean {
  return OVERLAY_FORMS.some((form) => name.startsWith(overlayPrefix(form)))
}

function overlayAttributeOf(rel: Buffer, attribute: string, what: string): LayerNotTaken {
  const file = rel.length === 0 ? 'its top directory' : quote(rel.toString('utf8'))
  return new LayerNotTaken(
    `${what} carries the overlay attribute ${attribute} on ${file}, which wafers would store escaped and importctl keeps as it is`,
  )
}

/**
 * Whether systemd made this directory itself for a path the tar does not list: 0700, root's, no
 * attributes, and changed after systemd made the layer's top directory (a listed directory gets
 * the tar's time when its entries are in). Without a birth time to compare, never.
 */
function impliedDirectory(xattr: Xattr, fd: number, stat: BigIntStats, started: bigint, rel: Buffer): boolean {
  if (started === 0n || stat.mtimeNs < started) return false
  if (rel.length === 0) return attributeNames(xattr, at(fd)).length === 0
  return (
    (stat.mode & 0o7777n) === 0o700n && stat.uid === 0n && stat.gid === 0n && attributeNames(xattr, at(fd)).length === 0
  )
}

/** What wafers' unpack gives a parent a tar does not list: the layers below's, else 0755 0:0 at time 0. */
function belowOrDefault(xattr: Xattr, destFd: number, lowers: readonly string[], rel: Buffer): Level['meta'] {
  const found = findBelow(lowers, rel)
  if (found?.stat.isDirectory()) {
    for (const [name, value] of found.xattrs) xattr.setAttributeSync(at(destFd).toString(), name, value)
    return {
      gid: Number(found.stat.gid),
      mode: Number(found.stat.mode & 0o7777n),
      mtimeNs: found.stat.mtimeNs,
      uid: Number(found.stat.uid),
    }
  }

  return {gid: 0, mode: 0o755, mtimeNs: 0n, uid: 0}
}

/**
 * Whiteout devices (0/0), made once by a child `mknod` (Node has none) under a hidden name in the
 * new tree's top and hard-linked wherever one is needed, as overlayfs itself shares its whiteouts.
 */
class WhiteoutMaker {
  private made: Buffer | undefined

  constructor(
    private readonly rootFd: number,
    private readonly what: string,
  ) {}

  at(destFd: number, name: Buffer): void {
    if (this.made === undefined) {
      // A name no layer has: it sits beside the layer's own top entries until dispose().
      const name = `.wafers-whiteout-${process.pid}-${randomBytes(6).toString('hex')}`
      const failed = mknodAt(this.rootFd, name, {devmajor: 0, devminor: 0, mode: 0, type: 'char'})
      if (failed) {
        const why = failed.missing ? `${failed.missing} is not on PATH: install coreutils` : failed.said
        throw new WafersError(`${this.what} could not be taken in: mknod of a whiteout failed (${why}).`)
      }

      this.made = at(this.rootFd, Buffer.from(name))
    }

    linkSync(this.made, at(destFd, name))
  }

  dispose(): void {
    if (this.made !== undefined) unlinkSync(this.made)
    this.made = undefined
  }
}
