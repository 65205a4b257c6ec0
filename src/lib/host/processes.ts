import {
  type Stats,
  type StatsFs,
  promises as fs,
  lstatSync,
  readdirSync,
  readlinkSync,
  statSync,
  statfsSync,
} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {readProcFile} from './files.js'
import {diesWithUs, systemProgram} from './run.js'
import {type MountEntry, overlayOptionLayers, parseMountInfo} from './mounts.js'

/** A process that keeps a directory busy. */
export interface ProcessUse {
  command: string
  pid: number
}

/**
 * The processes whose root, working directory or open files are in the stack mounted at
 * `mountpoint`, found by reading /proc (what fuser -m would say), sorted by pid. Processes in
 * other mount namespaces count too (a container started with systemd-nspawn keeps the stack busy
 * without making umount fail): a container whose root is the stack shares its root's inode, and
 * with `ownDevice` (an overlay: its own file system) anything open on that device counts. Open
 * files are looked at only with `openFiles` (one stat each, slow on a busy host).
 */
export async function processesUsing(
  mountpoint: string,
  options: {openFiles?: boolean; ownDevice?: boolean} = {},
): Promise<ProcessUse[]> {
  const top = await fs.stat(mountpoint)
  const inside = (target: string) => target === mountpoint || target.startsWith(mountpoint + '/')
  const onStack = async (link: string, isRoot: boolean) => {
    const stat = await fs.stat(link).catch(() => undefined)
    if (stat === undefined || stat.dev !== top.dev) return false
    return options.ownDevice || (isRoot && stat.ino === top.ino)
  }

  const pids = (await fs.readdir('/proc')).filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)
  const users = await Promise.all(
    pids.map(async (pid): Promise<ProcessUse | undefined> => {
      const base = `/proc/${pid}`
      const fds = options.openFiles ? await fs.readdir(`${base}/fd`).catch(() => [] as string[]) : []
      const links = ['root', 'cwd', ...fds.map((fd) => `fd/${fd}`)].map((link) => `${base}/${link}`)
      const targets = await Promise.all(links.map((link) => fs.readlink(link).catch(() => '')))
      let busy = targets.some((target) => inside(target))
      // Without a device of its own (a bind mount), only a root at the stack's top can be told apart.
      for (const [index, link] of (options.ownDevice ? links : links.slice(0, 1)).entries()) {
        if (busy) break
        busy = await onStack(link, index === 0)
      }

      if (!busy) return undefined
      const command = (await fs.readFile(`${base}/comm`, 'utf8').catch(() => '?')).trim()
      return {command, pid: Number(pid)}
    }),
  )
  return users.filter((user) => user !== undefined).sort((a, b) => a.pid - b.pid)
}

/** How many open files on the host `openFiles: 'affordable'` still looks at (about 35 µs each). */
const AFFORDABLE_OPEN_FILES = 10_000

/** statfs(2)'s magic number of overlayfs. */
const OVERLAYFS_MAGIC = 0x79_4c_76_30

/**
 * A use of the store's wafers that the live mount table does not show: a stack detached with
 * `umount --lazy` that processes still use, a stack mounted in another mount namespace, or
 * processes working in a wafer's own directory.
 */
export interface HiddenUse {
  /** Its mount point, when found in this mount namespace's own table (a live stack may be it). */
  hereAt?: string
  kind: 'detached' | 'files' | 'namespace'
  /** The wafer that is the stack's writable top (or top-most layer), when known. */
  top?: string
  /** The processes that keep it (for a namespace: one process of it). */
  users: ProcessUse[]
  /** The wafers it uses, the top (when known) first, then the layers below it. */
  wafers: string[]
  /** Where it is, to say in a sentence: "a detached stack", "/x in the mount namespace of 12 (sh)". */
  where: string
}

/** What hiddenUses needs of the store, kept apart from store.ts so that this module imports no store. */
export interface StoreView {
  /** The wafers below `name`, nearest first, as far as they can be traced. */
  ancestry(name: string): string[]
  /** The short link ids of `.links` by wafer name. */
  linkTargets(): Map<string, string>
  names: string[]
  root: string
}

/**
 * Finds the uses of the store's wafers that the live mount table hides, by what the kernel says
 * of every process (its root, working directory, executable and, with `openFiles`, its open
 * files) and of every other mount namespace's mount table. With `files: false`, only stacks are
 * looked for (roots and working directories on overlays), not processes in wafers' own directories,
 * which is all `stack` needs and much cheaper. A lazily detached overlay is in no
 * mount table: its users are found by their device (an overlay not mounted here) and the inode of
 * its root, which overlayfs takes from the upper layer, the top wafer's `data`.
 */
export async function hiddenUses(
  view: StoreView,
  options: {files?: boolean; openFiles?: 'affordable' | boolean; table: MountEntry[]},
): Promise<HiddenUse[]> {
  const root = await fs.realpath(view.root).catch(() => view.root)
  const rootStat = statSync(root, {throwIfNoEntry: false})
  if (rootStat === undefined) return []
  // The inodes of every wafer's directory and data: two lstats a wafer, so made only when a walk up
  // from a process's directory could meet one (tens of thousands of wafers, a few such processes).
  let inodes: {data: Map<number, string>; dirs: Map<number, string>} | undefined
  const waferInodes = () => {
    if (inodes !== undefined) return inodes
    inodes = {data: new Map(), dirs: new Map()}
    for (const name of view.names) {
      const dir = path.join(root, name)
      const [dirStat, dataStat] = [dir, path.join(dir, 'data')].map((file) => lstatSync(file, {throwIfNoEntry: false}))
      if (dirStat?.dev === rootStat.dev) inodes.dirs.set(dirStat.ino, name)
      if (dataStat?.dev === rootStat.dev) {
        inodes.data.set(dataStat.ino, name)
        inodes.dirs.set(dataStat.ino, name)
      }
    }

    return inodes
  }

  const hostRoot = statSync('/')
  const same = (a: Stats, b: Stats) => a.dev === b.dev && a.ino === b.ino
  // The wafer whose directory (or data, bind-mounted or not) directory `dir` is in. A walk up that
  // ends at the host's root without passing the store's root is in no wafer, and costs no lstat
  // of every wafer; one that passes it, or ends at another root (a chroot, a detached bind mount),
  // is looked up.
  const waferOfDir = (dir: string): string | undefined => {
    const chain = statChain(dir)
    const top = chain.at(-1)
    if (top === undefined) return undefined
    const atStore = chain.findIndex((stat) => same(stat, rootStat))
    if (same(top, hostRoot) && atStore === -1) return undefined
    if (atStore > 0) {
      // Through the store's root: the directory below it is a wafer's, named by the link's path.
      const target = readlinkOrUndefined(dir)
      const name = target?.startsWith(root + '/') ? target.slice(root.length + 1).split('/')[0] : undefined
      const stat = name === undefined ? undefined : lstatSync(path.join(root, name), {throwIfNoEntry: false})
      if (stat !== undefined && same(stat, chain[atStore - 1])) return view.names.includes(name!) ? name : undefined
    }

    const {dirs} = waferInodes()
    for (const stat of chain) {
      const name = stat.dev === rootStat.dev ? dirs.get(stat.ino) : undefined
      if (name !== undefined) return name
    }

    return undefined
  }

  const visible = new Set(options.table.map((entry) => entry.majorMinor))
  const ownNamespace = readlinkSync('/proc/self/ns/mnt')
  const overlay = new Map<number, boolean>()
  const isOverlay = (dev: number, file: string) => {
    if (!overlay.has(dev)) overlay.set(dev, statfsOrUndefined(file)?.type === OVERLAYFS_MAGIC)
    return overlay.get(dev)!
  }

  const direct = new Map<string, Map<number, ProcessUse>>()
  // Overlays no table here shows, by device: who uses them, and through which /proc links (which
  // wafer is their top is worked out only for those no other namespace's table shows either).
  const detached = new Map<
    number,
    {links: Array<{file: string; stat: Stats}>; tops: Set<string>; users: Map<number, ProcessUse>}
  >()
  const namespaces = new Map<string, number>()
  const commands = new Map<number, string>()
  const commandOf = (pid: number) => {
    if (!commands.has(pid)) commands.set(pid, readProcFile(`/proc/${pid}/comm`)?.trim() ?? '?')
    return {command: commands.get(pid)!, pid}
  }

  const entries = await fs.readdir('/proc')
  // Open files cost one stat each. 'affordable' looks at them when the host has few enough (a
  // detached stack kept only by an open file is found then), which listing them tells cheaply.
  const fdLists = new Map<string, string[]>()
  let openFiles = options.openFiles === true
  if (options.openFiles === 'affordable') {
    let total = 0
    for (const entry of entries) {
      if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
      const fds = readdirOrEmpty(`/proc/${entry}/fd`)
      fdLists.set(entry, fds)
      total += fds.length
      if (total > AFFORDABLE_OPEN_FILES) break
    }

    openFiles = total <= AFFORDABLE_OPEN_FILES
  }

  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
    const pid = Number(entry)
    const base = `/proc/${pid}`
    const namespace = readlinkOrUndefined(`${base}/ns/mnt`)
    if (namespace !== undefined && namespace !== ownNamespace && !namespaces.has(namespace))
      namespaces.set(namespace, pid)
    const fds = openFiles ? (fdLists.get(entry) ?? readdirOrEmpty(`${base}/fd`)).map((fd) => `fd/${fd}`) : []
    const links = options.files === false ? ['root', 'cwd', ...fds] : ['root', 'cwd', 'exe', ...fds]
    for (const link of links) {
      const file = `${base}/${link}`
      const stat = statOrUndefined(file)
      if (stat === undefined) continue
      if (stat.dev === rootStat.dev) {
        if (options.files === false) continue
        // In a wafer's own directory (or a bind mount of its data, detached or not).
        const name = stat.isDirectory() ? waferOfDir(file) : fileInWafer(file, root, view.names)
        if (name !== undefined) {
          if (!direct.has(name)) direct.set(name, new Map())
          direct.get(name)!.set(pid, commandOf(pid))
        }

        continue
      }

      if (visible.has(majorMinor(stat.dev)) || !isOverlay(stat.dev, file)) continue
      // An overlay this namespace does not show: detached, or mounted in another namespace only.
      if (!detached.has(stat.dev)) detached.set(stat.dev, {links: [], tops: new Set(), users: new Map()})
      const use = detached.get(stat.dev)!
      use.users.set(pid, commandOf(pid))
      use.links.push({file, stat})
    }

    // A file mapped into memory stays in use with its descriptor closed (a shared writable map
    // still writes to it): /proc/PID/maps names it, one read for every mapping. Only when open
    // files are asked for outright (rm, mv, a pull's split), not by 'affordable'.
    if (options.openFiles === true && options.files !== false) {
      for (const name of mappedWafers(base, root, view.names)) {
        if (!direct.has(name)) direct.set(name, new Map())
        direct.get(name)!.set(pid, commandOf(pid))
      }
    }
  }

  const uses: HiddenUse[] = []
  const links = view.linkTargets()
  // Mount tables to look through: each other namespace with a process in it, then those no process
  // is in, kept alive by an nsfs bind mount (`unshare --mount=FILE`), read by entering them.
  const tables: Array<{entries: MountEntry[]; who: () => string; users: () => ProcessUse[]}> = []
  const seen = new Set([ownNamespace, ...namespaces.keys()])
  const pinned: Array<{file: string; namespace: string}> = []
  const findPinned = (entries: MountEntry[], prefix: string) => {
    for (const entry of entries) {
      if (entry.fstype !== 'nsfs' || !/^mnt:\[\d+\]$/.test(entry.root) || seen.has(entry.root)) continue
      seen.add(entry.root)
      pinned.push({file: prefix + entry.mountpoint, namespace: entry.root})
    }
  }

  findPinned(options.table, '')
  for (const [namespace, pid] of namespaces) {
    const text = readProcFile(`/proc/${pid}/mountinfo`, 16 * 1024 * 1024)
    if (text === undefined || readlinkOrUndefined(`/proc/${pid}/ns/mnt`) !== namespace) continue
    const entries = parseMountInfo(text)
    findPinned(entries, `/proc/${pid}/root`)
    tables.push({
      entries,
      who: () => `the mount namespace of ${commandOf(pid).pid} (${commandOf(pid).command})`,
      users: () => [commandOf(pid)],
    })
  }

  for (let index = 0; index < pinned.length; index++) {
    const {file, namespace} = pinned[index]
    const entries = await pinnedMountTable(file, namespace)
    tables.push({entries, who: () => `the mount namespace kept by ${file}, which no process is in`, users: () => []})
  }

  // Looking for uses of wafers' own files (rm), this namespace's table counts too: a bind mount of
  // part of a wafer (or of a stack, kept after unstack --lazy) is in no stack's mount point.
  const own = {entries: options.table, here: true, users: () => [] as ProcessUse[], who: () => 'this mount namespace'}
  const everyTable = options.files === false ? tables : [own, ...tables]
  const storeDev = majorMinor(rootStat.dev)
  const storeInFs = options.files === false ? undefined : pathInFileSystem(root, storeDev, options.table)
  for (const {entries, here, who: whose, users: ownUsers} of everyTable.map((table) => ({here: false, ...table}))) {
    for (const entry of entries) {
      if (storeInFs !== undefined && entry.majorMinor === storeDev && entry.root.startsWith(storeInFs + '/')) {
        const name = entry.root.slice(storeInFs.length + 1).split('/')[0]
        if (view.names.includes(name)) {
          uses.push({
            ...(here ? {hereAt: entry.mountpoint} : {}),
            kind: 'files',
            users: [],
            wafers: [name],
            where: `a bind mount of its files at ${entry.mountpoint} in ${whose()}`,
          })
        }

        continue
      }

      if (entry.fstype !== 'overlay' || (!here && visible.has(entry.majorMinor))) continue
      const layers = overlayOptionLayers(entry)
      const waferOf = (dir: string | undefined) => {
        if (dir === undefined) return undefined
        if (path.dirname(dir) === path.join(root, '.links')) return links.get(path.basename(dir))
        return path.basename(dir) === 'data' && path.dirname(path.dirname(dir)) === root
          ? path.basename(path.dirname(dir))
          : undefined
      }

      const wafers = [layers.upper, ...layers.lowers].map((dir) => waferOf(dir)).filter((name) => name !== undefined)
      if (wafers.length === 0) continue
      const top = waferOf(layers.upper) ?? waferOf(layers.lowers[0])
      const dev = [...detached.keys()].find((key) => majorMinor(key) === entry.majorMinor)
      const users = dev === undefined ? ownUsers() : [...detached.get(dev)!.users.values()]
      if (dev !== undefined) detached.delete(dev)
      const who = users.map((user) => `${user.pid} (${user.command})`).join(', ')
      uses.push({
        ...(here && dev === undefined ? {hereAt: entry.mountpoint} : {}),
        kind: 'namespace',
        top,
        users,
        wafers: [...new Set([...wafers, ...(top === undefined ? [] : view.ancestry(top))])],
        where: `the stack mounted at ${entry.mountpoint} in ${dev === undefined ? whose() : `the mount namespace of ${who}`}`,
      })
    }
  }

  for (const use of detached.values()) {
    for (const {file, stat} of use.links) {
      const top = stat.isDirectory()
        ? walkUp(file, (dir) => (dir.dev === stat.dev ? waferInodes().data.get(dir.ino) : undefined), stat.dev)
        : layerHolding(file, stat.ino, root, view.names)
      if (top !== undefined) use.tops.add(top)
    }

    const users = [...use.users.values()].sort((a, b) => a.pid - b.pid)
    const who = users.map((user) => `${user.pid} (${user.command})`).join(', ')
    for (const top of use.tops) {
      uses.push({
        kind: 'detached',
        top,
        users,
        wafers: [top, ...view.ancestry(top)],
        where: `a detached stack still used by ${who}`,
      })
    }
  }

  for (const [name, users] of direct) {
    const list = [...users.values()].sort((a, b) => a.pid - b.pid)
    const who = list.map((user) => `${user.pid} (${user.command})`).join(', ')
    uses.push({kind: 'files', users: list, wafers: [name], where: `its own files, used by ${who}`})
  }

  return uses
}

/**
 * The mount table of the mount namespace that the nsfs file `file` keeps alive (no process is in
 * it), read by entering it (nsenter, at most 10 s). One that cannot be read is refused: what it
 * mounts cannot be known.
 */
async function pinnedMountTable(file: string, namespace: string): Promise<MountEntry[]> {
  try {
    const {execa} = await import('execa')
    const command = diesWithUs(systemProgram('nsenter'), [
      `--mount=${file}`,
      systemProgram('cat'),
      '/proc/self/mountinfo',
    ])
    const {stdout} = await execa(command.file, command.args, {
      maxBuffer: 64 * 1024 * 1024,
      stdin: 'ignore',
      timeout: 10_000,
    })
    return parseMountInfo(stdout)
  } catch {
    throw new WafersError(
      `the mount namespace ${namespace} kept alive by ${file} cannot be looked into, so whether it uses wafers is unknown; unmount ${file} if it is not needed.`,
    )
  }
}

/**
 * Where directory `dir` (a real path) is inside its own file system (device `dev`), as mountinfo's
 * root field says it: through the mount of `table` it is under. Undefined when not found.
 */
function pathInFileSystem(dir: string, dev: string, table: MountEntry[]): string | undefined {
  const under = table
    .filter(
      (entry) =>
        entry.majorMinor === dev &&
        (dir === entry.mountpoint || dir.startsWith(entry.mountpoint === '/' ? '/' : entry.mountpoint + '/')),
    )
    .sort((a, b) => b.mountpoint.length - a.mountpoint.length)[0]
  if (under === undefined) return undefined
  const rest = under.mountpoint === '/' ? dir : dir.slice(under.mountpoint.length)
  return path.posix.join(under.root, rest).replace(/\/$/, '') || '/'
}

/**
 * Walks up from directory `dir` (a /proc link) through its parents, across mounts, until `match`
 * names a wafer or the walk reaches a root. With `dev`, stops on leaving that device.
 */
function walkUp(dir: string, match: (stat: Stats) => string | undefined, dev?: number): string | undefined {
  let current = dir
  let previous: Stats | undefined
  for (let depth = 0; depth < 64; depth++) {
    const stat = statOrUndefined(current)
    if (stat === undefined || (dev !== undefined && stat.dev !== dev)) return undefined
    if (previous && previous.dev === stat.dev && previous.ino === stat.ino) return undefined
    const name = match(stat)
    if (name !== undefined) return name
    previous = stat
    current += '/..'
  }

  return undefined
}

/** The stats of directory `dir` (a /proc link) and of each directory above it, across mounts, up to its root. */
function statChain(dir: string): Stats[] {
  const chain: Stats[] = []
  let current = dir
  for (let depth = 0; depth < 64; depth++) {
    const stat = statOrUndefined(current)
    const previous = chain.at(-1)
    if (stat === undefined || (previous && previous.dev === stat.dev && previous.ino === stat.ino)) break
    chain.push(stat)
    current += '/..'
  }

  return chain
}

/** The wafer of the store at `root` whose directory holds the file a /proc link points at, if any. */
function fileInWafer(link: string, root: string, names: string[]): string | undefined {
  const target = readlinkOrUndefined(link)
  if (target === undefined || !target.startsWith(root + '/')) return undefined
  const name = target.slice(root.length + 1).split('/')[0]
  return names.includes(name) ? name : undefined
}

/** The wafers (of `names`, in the store at `root`) with files mapped by the process at `base` (/proc/PID). */
function mappedWafers(base: string, root: string, names: string[]): Set<string> {
  const found = new Set<string>()
  const text = readProcFile(`${base}/maps`, 64 * 1024 * 1024)
  if (text === undefined) return found
  for (const line of text.split('\n')) {
    // address perms offset dev inode, then the path (after spaces), if any.
    const at = line.indexOf(' ' + root + '/')
    if (at === -1) continue
    const name = line.slice(at + root.length + 2).split('/')[0]
    if (names.includes(name)) found.add(name)
  }

  return found
}

/**
 * The wafer whose `data` holds the file an overlay's /proc link points at: overlayfs gives a
 * file the inode number of the layer's file, and a detached mount's path is relative to its root.
 */
function layerHolding(link: string, ino: number, root: string, names: string[]): string | undefined {
  const target = readlinkOrUndefined(link)
  if (target === undefined || !target.startsWith('/')) return undefined
  return names.find((name) => lstatSync(path.join(root, name, 'data', target), {throwIfNoEntry: false})?.ino === ino)
}

/** "major:minor" of a device number as stat(2) gives it (Linux's encoding). */
function majorMinor(dev: number): string {
  const major = Math.floor(dev / 256) & 0xf_ff
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xf_ff_00)
  return `${major}:${minor}`
}

function statOrUndefined(file: string): Stats | undefined {
  try {
    return statSync(file)
  } catch {
    return undefined
  }
}

function statfsOrUndefined(file: string): StatsFs | undefined {
  try {
    return statfsSync(file)
  } catch {
    return undefined
  }
}

function readlinkOrUndefined(file: string): string | undefined {
  try {
    return readlinkSync(file)
  } catch {
    return undefined
  }
}

function readdirOrEmpty(dir: string): string[] {
  try {
    return readdirSync(dir)
  } catch {
    return []
  }
}
