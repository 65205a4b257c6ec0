/**
 * The one unpacker: writes every entry layer/tar/reader.ts yields, itself, into a directory held
 * by file descriptor. Nothing downstream re-reads the tar, so what was checked is what is written;
 * and the writing is confined to the directory even if a check were wrong: every directory is
 * opened one component at a time with O_NOFOLLOW|O_DIRECTORY through /proc/self/fd/N/NAME (Node
 * has no openat), files are created O_CREAT|O_EXCL|O_NOFOLLOW, owners, modes and times are set
 * through descriptors (or l* calls on a name in a held directory), never through a path that a
 * symlink could bend. Devices, FIFOs and whiteouts need mknod(2), which Node lacks: `mknod` and
 * `mkfifo` run as children of ours with a path through /proc/<our pid>/fd/<dirfd>, and whiteouts
 * of the same owner, mode and time share one inode (overlayfs itself hard-links its whiteouts
 * since Linux 5.8), so a layer of 500 whiteouts costs one child, not 500.
 *
 * Times are set at a fixed point of whole microseconds: the reader rounds a tar's time (seconds,
 * or a pax mtime to the nanosecond) half up to µs, and utimes gets that as a double. Node hands
 * the double to libuv, which truncates it to whole µs; a double near today's epoch seconds is
 * exact to ~0.24 µs, so it is aimed at the middle of its µs (see seconds()) and the kernel stores
 * exactly that µs (ns = µs * 1000). A pack that reads lstat's ns and rounds to the nearest µs gets
 * the same value back, and a pull -> push -> pull round trip is stable. (Past the year 2242 a
 * double no longer resolves µs; no layer needs that.)
 *
 * Directories get their modes and times after every entry is written (entries written into a
 * directory change its mtime), in one walk of the tree the reader kept. Parents a tar does not
 * list get the owner, mode, time and attributes the path has in the layers below (`lowers`, as
 * umoci and podman do), else 0755 0:0 and time 0, so a push of the same files is reproducible.
 */
import type {Hash} from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  fstatSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  renameSync,
  rmdirSync,
  statfsSync,
  symlinkSync,
  unlinkSync,
  writeSync,
  chmodSync,
  utimesSync,
  chownSync,
  mkdtempSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'

import {WafersError, isErrno} from '../errors.js'
import {fdPath as at, mknodAt} from '../host/files.js'
import {withUs} from '../host/run.js'
import {type Xattr, loadXattr} from '../host/xattr.js'
import {findBelow} from './lookup.js'
import {type TarEntry, type TreeNode, quote, readTar} from './tar/reader.js'
import {OPAQUE_VALUE, opaqueAttribute} from './whiteouts.js'
import {storedAttributeName} from './xattrs.js'

export interface UnpackTarOptions {
  /** How messages name the archive ('layer 2 of 3 (sha256:...)', 'rootfs.tar'). */
  name: string
  /** A layer: `.wh.` names are OCI whiteouts. Otherwise they are ordinary names. */
  layer: boolean
  /** The data directories of the layers below, nearest first, for parents the tar does not list. */
  lowers?: readonly string[]
  /** Directories that were there before keep their owner, mode and time (ADD into an image). */
  keepExisting?: boolean
  /**
   * For a tar unpacked into an image (ADD): where a symlink that was there before the tar (not
   * one an entry made) leads, given its path relative to `dir`, as an existing directory's path
   * that no symlink leads out of the image from; undefined to refuse the entry. Without it such a
   * symlink is refused.
   */
  resolveExisting?: (relPath: string) => string | undefined
  /** Every byte of the tar (the diffID). */
  hash?: Hash
  signal?: AbortSignal
}

export interface UnpackTarResult {
  /** Entries of the tar, whiteouts included (pax and long-name headers not counted). */
  entries: number
  /** Bytes of file data written. */
  bytes: number
}

/** Room left free on the store's file system, beyond which an unpack stops. */
const FREE_MARGIN = 64 * 1024 * 1024
/** Open directories kept along the current path; deeper ones are reopened when needed. */
const FD_WINDOW = 512
const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW
/** Linux O_PATH: a handle on a device or FIFO that does not open it. */
const O_PATH = 0o10000000

interface DirMeta {
  mode: number
  mtimeUs: bigint
}

let truncates: boolean | undefined

/**
 * Whether this Node hands utimes' double to the kernel cut to whole µs (Node 20's libuv) or as the
 * nanosecond nearest the double (Node 24's): asked once, of a file in a private temporary directory.
 */
function utimesTruncates(): boolean {
  if (truncates === undefined) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'wafers-utimes-'))
    try {
      const file = path.join(dir, 'probe')
      writeFileSync(file, '')
      utimesSync(file, 1.000_000_5, 1.000_000_5)
      truncates = statSync(file, {bigint: true}).mtimeNs % 1000n === 0n
    } finally {
      rmSync(dir, {force: true, recursive: true})
    }
  }

  return truncates
}

/**
 * A µs time as the double utimes takes. Where the µs are cut off, the value is aimed at the middle
 * of its µs, so the rounding of the double (±0.24 µs today) stays inside it and the kernel stores
 * the µs exactly; where the nearest ns is kept, the µs itself, which lands within 0.24 µs of it.
 * Either way a pack, rounding to the nearest µs, reads back the same time.
 */
function seconds(us: bigint): number {
  return utimesTruncates() ? (Number(us) + 0.5) / 1e6 : Number(us) / 1e6
}

/** A time in ns, rounded to the µs as a pack rounds it, as the double utimes takes (see seconds). */
export function utimesSeconds(ns: bigint): number {
  const us = ns >= 0n ? (ns + 500n) / 1000n : -((-ns + 499n) / 1000n)
  return seconds(us)
}

/** The path of a node from the top, for messages. */
function pathOf(node: TreeNode): string {
  const parts: Buffer[] = []
  for (let n: TreeNode | undefined = node; n?.parent; n = n.parent) parts.push(n.name, Buffer.from('/'))
  return Buffer.concat(parts.reverse().slice(1)).toString('utf8')
}

function relOf(node: TreeNode): Buffer {
  const parts: Buffer[] = []
  for (let n: TreeNode | undefined = node; n?.parent; n = n.parent) parts.push(n.name, Buffer.from('/'))
  return Buffer.concat(parts.reverse().slice(1))
}

/**
 * Unpacks the uncompressed tar in `source` into the existing directory `dir` (see the module
 * comment), refusing with a WafersError naming the archive and entry whatever the reader refuses,
 * and stopping when the data would leave less than a margin free on the file system. On a throw
 * `dir` may hold part of the tar; nothing outside it was touched.
 */
export async function unpackTar(
  source: AsyncIterable<Buffer>,
  dir: string,
  options: UnpackTarOptions,
): Promise<UnpackTarResult> {
  const xattr = await loadXattr()
  let rootFd: number
  try {
    // A held /proc/PID/fd/N is a link by design: its target is opened (N is ours), any other last
    // component is not followed.
    rootFd = openSync(/^\/proc\/(self|\d+)\/fd\/\d+$/.test(dir) ? `${dir}/.` : dir, DIR_FLAGS)
  } catch (error) {
    if (isErrno(error, 'ENOENT')) throw new WafersError(`${dir} does not exist.`)
    if (isErrno(error, 'ENOTDIR') || isErrno(error, 'ELOOP')) throw new WafersError(`${dir} is not a directory.`)
    throw error
  }

  const writer = new Writer(rootFd, xattr, options)
  try {
    const entries = readTar(source, {hash: options.hash, layer: options.layer, name: options.name})
    let next = await entries.next()
    while (!next.done) {
      if (options.signal?.aborted) throw new WafersError(`unpacking ${options.name} was interrupted.`)
      writer.remember(next.value)
      try {
        await writer.write(next.value)
      } catch (error) {
        throw writeError(error, options.name, next.value)
      }

      next = await entries.next()
    }

    try {
      writer.finish()
    } catch (error) {
      throw writeError(error, options.name)
    }

    return {bytes: writer.bytes, entries: next.value}
  } finally {
    writer.close()
    closeSync(rootFd)
  }
}

class Writer {
  bytes = 0
  /** Open directories along the current chain (fds[0] is the top); -1 where closed for the window. */
  private readonly fds: number[]
  private readonly budget: number
  private readonly whiteouts = new Map<string, {dirFd: number; ino: number; name: Buffer}>()
  private temp = 0
  private rootListed = false
  /** The entry being written, for messages. */
  private current?: TarEntry

  constructor(
    private readonly rootFd: number,
    private readonly xattr: Xattr,
    private readonly options: UnpackTarOptions,
  ) {
    this.fds = [rootFd]
    const stats = statfsSync(`/proc/self/fd/${rootFd}`, {bigint: true})
    this.budget = Number(stats.bavail * stats.bsize) - FREE_MARGIN
  }

  private refuse(entry: TarEntry | TreeNode, why: string): never {
    const shown = 'raw' in entry ? entry.raw.toString('utf8') : pathOf(entry)
    throw new WafersError(`${this.options.name} was refused: its entry ${quote(shown)} ${why}.`)
  }

  /** Brings the open directories in line with the entry's chain and returns its parent's fd. */
  private parentOf(entry: TarEntry): number {
    const {chain, kept} = entry
    while (this.fds.length > kept) {
      const fd = this.fds.pop()!
      if (fd >= 0 && fd !== this.rootFd) closeSync(fd)
    }

    for (let i = this.fds.length; i < chain.length; i++)
      this.fds.push(this.openChild(this.fdAt(i - 1, chain), chain[i]))
    return this.fdAt(chain.length - 1, chain)
  }

  /** The fd of chain[i], reopening it from the nearest open ancestor when the window closed it. */
  private fdAt(i: number, chain: readonly TreeNode[]): number {
    if (this.fds[i] >= 0) return this.fds[i]
    let j = i
    while (this.fds[j] < 0) j--
    for (let k = j + 1; k <= i; k++) {
      this.fds[k] = this.openChild(this.fds[k - 1], chain[k])
      // Keep at most FD_WINDOW open below the one asked for.
      if (k - 1 > 0 && k - 1 < i - FD_WINDOW) {
        closeSync(this.fds[k - 1])
        this.fds[k - 1] = -1
      }
    }

    return this.fds[i]
  }

  /** Opens directory `node` in `parentFd`, making it when missing (a parent the tar did not list). */
  private openChild(parentFd: number, node: TreeNode): number {
    const file = at(parentFd, node.name)
    try {
      const fd = openSync(file, DIR_FLAGS)
      this.window()
      return fd
    } catch (error) {
      // O_NOFOLLOW|O_DIRECTORY on a symlink fails with ENOTDIR (or ELOOP): lstat tells.
      const link = (isErrno(error, 'ELOOP') || isErrno(error, 'ENOTDIR')) && lstatOrUndefined(file)?.isSymbolicLink()
      if (link && this.options.resolveExisting && node.meta === undefined) {
        // A symlink of the image, not of the tar: followed as the image would follow it.
        const resolved = this.options.resolveExisting(relOf(node).toString('utf8'))
        if (resolved !== undefined) {
          const fd = openSync(resolved, DIR_FLAGS)
          this.window()
          return fd
        }
      }

      if (isErrno(error, 'ELOOP') || isErrno(error, 'ENOTDIR'))
        this.refuse(
          this.current ?? node,
          `lands through ${quote(pathOf(node))}, a symlink or file that was there before, which wafers does not follow`,
        )
      if (!isErrno(error, 'ENOENT')) throw error
    }

    mkdirSync(file, 0o700)
    const fd = openSync(file, DIR_FLAGS)
    this.implicitMeta(fd, node)
    this.window()
    return fd
  }

  private window(): void {
    const length = this.fds.length
    if (length > FD_WINDOW) {
      const k = length - FD_WINDOW
      if (k > 0 && this.fds[k] >= 0) {
        closeSync(this.fds[k])
        this.fds[k] = -1
      }
    }
  }

  /** Owner, attributes and (for the end) mode and time of a directory no entry listed. */
  private implicitMeta(fd: number, node: TreeNode): void {
    const found = this.options.layer ? findBelow(this.options.lowers ?? [], relOf(node)) : undefined
    if (found?.stat.isDirectory()) {
      fchownSync(fd, Number(found.stat.uid), Number(found.stat.gid))
      for (const [name, value] of found.xattrs) this.xattr.setAttributeSync(`/proc/self/fd/${fd}/.`, name, value)
      node.meta = {mode: Number(found.stat.mode) & 0o7777, mtimeUs: (found.stat.mtimeNs + 500n) / 1000n} as DirMeta
    } else {
      fchownSync(fd, 0, 0)
      node.meta = {mode: 0o755, mtimeUs: 0n} as DirMeta
    }
  }

  async write(entry: TarEntry): Promise<void> {
    this.current = entry
    // Every entry, moot ones too, so the open directories follow the reader's chain.
    const parentFd = this.parentOf(entry)
    if (entry.moot) return
    const {node} = entry
    if (entry.type === 'opaque') {
      const fd = node === entry.chain[0] ? this.rootFd : this.ensureDir(parentFd, node)
      try {
        this.xattr.setAttributeSync(`/proc/self/fd/${fd}/.`, opaqueAttribute('trusted'), OPAQUE_VALUE)
      } finally {
        if (fd !== this.rootFd) closeSync(fd)
      }

      return
    }

    if (node.parent === undefined) {
      // The top directory itself ("./").
      this.rootListed = true
      // Unpacked into an image (ADD), the directory it lands in keeps what it had.
      if (!this.options.keepExisting) this.directoryMeta(this.rootFd, entry, true)
      return
    }

    const file = at(parentFd, node.name)
    const there = lstatOrUndefined(file)
    if (entry.type === 'dir') {
      if (there?.isDirectory()) {
        const fd = openSync(file, DIR_FLAGS)
        try {
          // A directory of the image (ADD) that this tar did not make keeps what it had.
          if (!(this.options.keepExisting && node.meta === undefined)) this.directoryMeta(fd, entry, true)
        } finally {
          closeSync(fd)
        }

        return
      }

      if (there) this.remove(entry, file, there)
      mkdirSync(file, 0o700)
      const fd = openSync(file, DIR_FLAGS)
      try {
        this.directoryMeta(fd, entry, true)
      } finally {
        closeSync(fd)
      }

      return
    }

    if (there) this.remove(entry, file, there)
    switch (entry.type) {
      case 'file': {
        await this.writeFile(parentFd, entry)
        break
      }

      case 'link': {
        const target = entry.target!
        const targetParent = this.openPath(target.parent!)
        try {
          linkSync(at(targetParent, target.name), file)
        } finally {
          if (targetParent !== this.rootFd) closeSync(targetParent)
        }

        break
      }

      case 'symlink': {
        this.named(parentFd, entry, (name) => {
          symlinkSync(entry.linkname, at(parentFd, name))
          lchownSync(at(parentFd, name), entry.uid, entry.gid)
          this.setAttributes(at(parentFd, name), entry)
          const time = seconds(entry.mtimeUs)
          lutimesSync(at(parentFd, name), time, time)
        })
        break
      }

      case 'whiteout': {
        this.whiteout(parentFd, entry)
        break
      }

      default: {
        this.named(parentFd, entry, (name) => {
          this.mknod(parentFd, name, entry)
          this.nodeMeta(at(parentFd, name), entry)
        })
      }
    }
  }

  /** The directory `node` (made as an implicit parent when missing) opened in `parentFd`. */
  private ensureDir(parentFd: number, node: TreeNode): number {
    const file = at(parentFd, node.name)
    const there = lstatOrUndefined(file)
    if (there?.isDirectory()) return openSync(file, DIR_FLAGS)
    if (there) this.refuse(node, 'is marked opaque but is not a directory')
    return this.openChild(parentFd, node)
  }

  /** Opens the directory `node` from the top, one component at a time (for hard link targets). */
  private openPath(node: TreeNode): number {
    const nodes: TreeNode[] = []
    for (let n: TreeNode | undefined = node; n?.parent; n = n.parent) nodes.push(n)
    let fd = this.rootFd
    for (const n of nodes.reverse()) {
      const next = openSync(at(fd, n.name), DIR_FLAGS)
      if (fd !== this.rootFd) closeSync(fd)
      fd = next
    }

    return fd
  }

  /** Clears the way for an entry that replaces what an earlier entry (or the image) put there. */
  private remove(entry: TarEntry, file: Buffer, there: ReturnType<typeof lstatSync>): void {
    if (!there?.isDirectory()) {
      unlinkSync(file)
      return
    }

    try {
      rmdirSync(file)
    } catch (error) {
      if (isErrno(error, 'ENOTEMPTY') || isErrno(error, 'EEXIST'))
        this.refuse(entry, 'would replace a directory that is not empty')
      throw error
    }
  }

  /**
   * Runs `make` with the entry's own name, or, when its name is not UTF-8 and it has attributes
   * (the xattr binding takes strings), with a temporary name renamed into place afterwards.
   */
  private named(parentFd: number, entry: TarEntry, make: (name: Buffer) => void): void {
    const {name} = entry.node
    if (entry.xattrs.length === 0 || Buffer.from(name.toString('utf8')).equals(name)) {
      make(name)
      return
    }

    const temp = Buffer.from(`.wafers-unpack-${process.pid}-${this.temp++}`)
    make(temp)
    renameSync(at(parentFd, temp), at(parentFd, name))
  }

  private async writeFile(parentFd: number, entry: TarEntry): Promise<void> {
    const {name} = entry.node
    const utf8 = Buffer.from(name.toString('utf8')).equals(name)
    const made = entry.xattrs.length === 0 || utf8 ? name : Buffer.from(`.wafers-unpack-${process.pid}-${this.temp++}`)
    const fd = openSync(
      at(parentFd, made),
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    )
    try {
      for await (const chunk of entry.data()) {
        this.bytes += chunk.length
        if (this.bytes > this.budget) {
          throw new WafersError(
            `${this.options.name} was stopped at its entry ${quote(entry.raw.toString('utf8'))}: unpacking it would leave less than ${FREE_MARGIN / 1024 / 1024} MiB free on the store's file system.`,
          )
        }

        let offset = 0
        while (offset < chunk.length) offset += writeSync(fd, chunk, offset, chunk.length - offset)
      }

      // Owner first: chown clears setuid bits and file capabilities.
      fchownSync(fd, entry.uid, entry.gid)
      fchmodSync(fd, entry.mode)
      this.setAttributes(at(parentFd, made), entry)
      const time = seconds(entry.mtimeUs)
      futimesSync(fd, time, time)
    } finally {
      closeSync(fd)
    }

    if (made !== name) renameSync(at(parentFd, made), at(parentFd, name))
  }

  /** A device, FIFO or whiteout device made by a child process in the held directory. */
  private mknod(
    parentFd: number,
    name: Buffer,
    entry: {devmajor: number; devminor: number; mode: number; type: string},
  ): void {
    // A child names our directory as /proc/<our pid>/fd/N; a name that is not UTF-8 is made under
    // a temporary one and renamed (arguments are strings).
    const plain = Buffer.from(name.toString('utf8')).equals(name) && !name.includes(0x0a)
    const made = plain ? name : Buffer.from(`.wafers-mknod-${process.pid}-${this.temp++}`)
    const type = entry.type === 'fifo' || entry.type === 'block' ? entry.type : 'char'
    const failed = mknodAt(parentFd, made.toString('utf8'), {...entry, type})
    if (failed?.missing)
      throw new WafersError(
        `unpacking ${this.options.name} needs ${failed.missing}, which is not on PATH: install coreutils.`,
      )
    if (failed) {
      const command = type === 'fifo' ? 'mkfifo' : 'mknod'
      throw new WafersError(
        `${this.options.name} could not be unpacked: ${command} of ${quote(name.toString('utf8'))} failed: ${failed.said}.`,
      )
    }

    if (!plain) renameSync(at(parentFd, made), at(parentFd, name))
  }

  /** Owner, mode, attributes and time of a device or FIFO, through an O_PATH handle on it. */
  private nodeMeta(file: Buffer, entry: TarEntry): void {
    const fd = openSync(file, O_PATH | constants.O_NOFOLLOW)
    try {
      const stat = fstatSync(fd)
      if (!(stat.isCharacterDevice() || stat.isBlockDevice() || stat.isFIFO()))
        this.refuse(entry, 'changed under wafers while it was made')
      const self = `/proc/self/fd/${fd}`
      chownSync(self, entry.uid, entry.gid)
      chmodSync(self, entry.mode)
      this.setAttributes(file, entry)
      const time = seconds(entry.mtimeUs)
      utimesSync(self, time, time)
    } finally {
      closeSync(fd)
    }
  }

  /** A 0/0 character device, sharing the inode of an earlier whiteout of the same owner, mode and time. */
  private whiteout(parentFd: number, entry: TarEntry): void {
    const key = `${entry.uid}:${entry.gid}:${entry.mode}:${entry.mtimeUs}`
    const file = at(parentFd, entry.node.name)
    const template = this.whiteouts.get(key)
    if (template) {
      // A later entry may have replaced the template (by a file, even): link only the very inode.
      const source = at(template.dirFd, template.name)
      const still = lstatOrUndefined(source)
      try {
        if (still?.ino === template.ino && still.isCharacterDevice() && still.rdev === 0) {
          linkSync(source, file)
          return
        }
      } catch (error) {
        if (!isErrno(error, 'ENOENT') && !isErrno(error, 'EMLINK')) throw error
      }

      // Gone, replaced, or linked as often as the file system allows: make a new one.
      closeSync(template.dirFd)
      this.whiteouts.delete(key)
    }

    this.mknod(parentFd, entry.node.name, {devmajor: 0, devminor: 0, mode: entry.mode, type: 'char'})
    this.nodeMeta(file, entry)
    if (this.whiteouts.size < 16) {
      const {ino} = lstatSync(file)
      this.whiteouts.set(key, {dirFd: openSync(`/proc/self/fd/${parentFd}/.`, DIR_FLAGS), ino, name: entry.node.name})
    }
  }

  /** Owner and attributes of a directory now, its mode and time for the end. */
  private directoryMeta(fd: number, entry: TarEntry, own: boolean): void {
    if (own) fchownSync(fd, entry.uid, entry.gid)
    this.setAttributes(Buffer.from(`/proc/self/fd/${fd}/.`), entry)
    entry.node.meta = {mode: entry.mode, mtimeUs: entry.mtimeUs} as DirMeta
  }

  /** The entry's extended attributes, under the names the one attribute policy gives them. */
  private setAttributes(file: Buffer, entry: TarEntry): void {
    for (const [name, value] of entry.xattrs) {
      const stored = storedAttributeName(name)
      try {
        this.xattr.setAttributeSync(file.toString('utf8'), stored, value)
      } catch (error) {
        const why = (error as Error).message?.split('\n')[0] ?? String(error)
        throw new WafersError(
          `${this.options.name} could not be unpacked: its entry ${quote(entry.raw.toString('utf8'))} has the attribute ${quote(name)}, which this file system refused (${why}).`,
        )
      }
    }
  }

  /**
   * Modes and times of every directory, once nothing more is written. The walk goes down from the
   * top, each directory opened in its parent's descriptor; setting a parent's time before its
   * children's is the same as after, since opening a child writes nothing into the parent.
   */
  finish(): void {
    const root: TreeNode = this.rootNode ?? {
      children: 0,
      depth: 0,
      id: 0,
      kind: 'dir',
      name: Buffer.alloc(0),
      parent: undefined,
    }
    // A layer that does not list "./" gives its top what the layers below have (or the default).
    if (!this.rootListed && this.options.layer) this.implicitMeta(this.rootFd, root)

    const apply = (fd: number, meta: DirMeta | undefined) => {
      if (meta === undefined) return
      fchmodSync(fd, meta.mode)
      const time = seconds(meta.mtimeUs)
      futimesSync(fd, time, time)
    }

    // Iterative (a tree may be 40,000 deep); a directory's fd is closed once its last child is taken.
    const stack: {fd: number; index: number; node: TreeNode}[] = [{fd: this.rootFd, index: 0, node: root}]
    apply(this.rootFd, root.meta as DirMeta | undefined)
    while (stack.length > 0) {
      const top = stack.at(-1)!
      const dirs = top.node.dirs ?? []
      if (top.index >= dirs.length) {
        stack.pop()
        if (top.fd !== this.rootFd && top.fd >= 0) closeSync(top.fd)
        continue
      }

      const next = dirs[top.index++]
      let fd: number
      try {
        fd = openSync(at(top.fd, next.name), DIR_FLAGS)
      } catch (error) {
        if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR') || isErrno(error, 'ELOOP')) continue
        throw error
      }

      if (top.index >= dirs.length && top.fd !== this.rootFd) {
        closeSync(top.fd)
        top.fd = -1
      }

      apply(fd, next.meta as DirMeta | undefined)
      stack.push({fd, index: 0, node: next})
    }
  }

  private rootNode?: TreeNode

  /** Keeps the reader's root node (the first of every chain) for the walk at the end. */
  remember(entry: TarEntry): void {
    this.rootNode ??= entry.chain[0]
  }

  close(): void {
    for (const fd of this.fds) if (fd >= 0 && fd !== this.rootFd) closeSync(fd)
    this.fds.length = 0
    for (const {dirFd} of this.whiteouts.values()) closeSync(dirFd)
    this.whiteouts.clear()
  }
}

/** lstat, undefined when nothing is there: without an exception, which costs more than the lstat. */
function lstatOrUndefined(file: Buffer) {
  return lstatSync(file, {throwIfNoEntry: false})
}

/** How a tarball on disk is compressed, from its first bytes. */
export type TarballCompression = 'bzip2' | 'gzip' | 'none' | 'xz' | 'zstd'

/** The compression a tarball's first bytes say, or 'none'. */
export function compressionByMagic(head: Buffer): TarballCompression {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip'
  if (head.subarray(0, 3).toString('latin1') === 'BZh') return 'bzip2'
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz'
  if (head.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return 'zstd'
  return 'none'
}

const PROGRAMS: Record<'bzip2' | 'xz' | 'zstd', {args: string[]; package: string}> = {
  bzip2: {args: ['-dc'], package: 'bzip2'},
  xz: {args: ['-dc'], package: 'xz-utils'},
  zstd: {args: ['-dc', '--quiet'], package: 'zstd'},
}

/**
 * Unpacks the tarball `file` (plain, gzip, bzip2, xz or zstd, told by its first bytes) into the
 * existing directory `dir` with unpackTar: an ordinary tarball, not a layer (`.wh.` names are
 * kept as they are). `file` must be a regular file; it is read without following a symlink.
 */
export async function unpackTarball(
  file: string,
  dir: string,
  options: Omit<UnpackTarOptions, 'layer' | 'name'> & {name?: string},
): Promise<UnpackTarResult> {
  const [{promises: fs}, {pipeline}, zlib, path] = await Promise.all([
    import('node:fs'),
    import('node:stream/promises'),
    import('node:zlib'),
    import('node:path'),
  ])
  const name = options.name ?? path.basename(file)
  const handle = await fs
    .open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    .catch((error: unknown) => {
      if (isErrno(error, 'ENOENT')) throw new WafersError(`${file} does not exist.`)
      if (isErrno(error, 'ELOOP')) throw new WafersError(`${file} is a symbolic link; give the tarball itself.`)
      throw error
    })
  try {
    if (!(await handle.stat()).isFile()) throw new WafersError(`${file} is not a regular file.`)
    const head = Buffer.alloc(6)
    await handle.read(head, 0, 6, 0)
    const compression = compressionByMagic(head)
    const input = handle.createReadStream({autoClose: false, start: 0})
    let result: UnpackTarResult | undefined
    let refused: unknown
    const sink = async (source: AsyncIterable<Buffer>) => {
      try {
        result = await unpackTar(source, dir, {...options, layer: false, name})
      } catch (error) {
        refused = error
        throw error
      }
    }

    if (compression === 'none' || compression === 'gzip') {
      try {
        await (compression === 'gzip'
          ? pipeline(input, zlib.createGunzip({chunkSize: 256 * 1024}), sink)
          : pipeline(input, sink))
      } catch (error) {
        if (refused) throw refused
        const code = (error as NodeJS.ErrnoException)?.code ?? ''
        if (/^Z_|^ERR_ZLIB/.test(code)) throw new WafersError(`${name} is not valid gzip data.`)
        throw error
      }

      return result!
    }

    const {execa} = await import('execa')
    const program = PROGRAMS[compression]
    const decompressor = withUs(compression, program.args)
    const child = execa(decompressor.file, decompressor.args, {
      buffer: {stderr: true, stdout: false},
      encoding: 'buffer',
      reject: false,
      stderr: 'pipe',
      stdin: 'pipe',
      stdout: 'pipe',
    })
    child.stdin.on('error', () => {})
    const feeding = pipeline(input, child.stdin).catch(() => {})
    try {
      await sink(child.stdout as AsyncIterable<Buffer>)
    } catch (error) {
      // A tar cut short may be the decompressor stopping at bad data: it has exited, and says so.
      const ended = /cut short|is empty/.test((error as Error)?.message ?? '')
      if (!ended) child.kill()
      await Promise.allSettled([child, feeding])
      if (ended && (await child).exitCode !== 0 && (await child).code !== 'ENOENT')
        throw new WafersError(`${name} is not valid ${compression} data.`)
      if ((await child).code === 'ENOENT')
        throw new WafersError(
          `${name} is ${compression}-compressed: install the ${program.package} package, ${compression} is not on PATH.`,
        )
      throw error
    }

    await feeding
    const done = await child
    if (done.code === 'ENOENT')
      throw new WafersError(
        `${name} is ${compression}-compressed: install the ${program.package} package, ${compression} is not on PATH.`,
      )
    if (done.exitCode !== 0) throw new WafersError(`${name} is not valid ${compression} data.`)
    return result!
  } finally {
    await handle.close()
  }
}

const WRITE_ERRORS: Record<string, string> = {
  EDQUOT: "the store's disk quota is used up",
  EFBIG: 'a file is larger than the file system takes',
  EINVAL: 'the file system refused a value of it (an owner, mode or time out of range)',
  EMLINK: 'it has more links than the file system takes',
  ENAMETOOLONG: 'a name is longer than the file system takes',
  ENOSPC: "the store's file system is full",
  EPERM: 'the file system does not permit it',
}

/** One sentence for a system error met while writing an entry (never raw errno text). */
function writeError(error: unknown, archive: string, entry?: TarEntry): Error {
  if (error instanceof WafersError) return error
  const code = (error as NodeJS.ErrnoException)?.code
  if (code === undefined) return error as Error
  const where = entry ? ` at its entry ${quote(entry.raw.toString('utf8'))}` : ''
  const why = WRITE_ERRORS[code] ?? `the system said ${code}`
  return new WafersError(`${archive} could not be unpacked${where}: ${why}.`)
}
