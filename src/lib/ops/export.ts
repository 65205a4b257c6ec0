import {spawn} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {closeSync, constants, promises as fs, fstatSync, lstatSync, openSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {withUs} from '../host/run.js'
import {checkRoot} from '../host/system.js'
import {traceAncestry} from '../store/ancestry.js'
import {withLock} from '../store/lock.js'
import {checkName} from '../store/names.js'
import {discardStage} from '../store/staging.js'
import {Locations, WaferStore} from '../store/store.js'
import {readInventory} from './inventory.js'
import {mountMergedView, refuseWritable} from './merged.js'

/** How the tarball is compressed, from its name. */
export type Compression = 'gzip' | 'none' | 'xz' | 'zstd'

/** What `export` wrote, as `--json` prints it. */
export interface ExportResult {
  /** Bytes written (the tarball's size). */
  bytes: number
  compression: Compression
  /** The tarball, or `-` for stdout. */
  file: string
  name: string
  /** The wafers whose merged view it holds, top first. */
  wafers: string[]
}

const TAR_COMPRESSION: Record<Compression, string[]> = {gzip: ['--gzip'], none: [], xz: ['--xz'], zstd: ['--zstd']}

/** The compression a tarball's name asks for: .tar, .tar.gz/.tgz, .tar.zst/.tzst, .tar.xz; `-` is plain. */
export function compressionOf(file: string): Compression {
  if (file === '-' || file.endsWith('.tar')) return 'none'
  if (/\.(tar\.gz|tgz)$/.test(file)) return 'gzip'
  if (/\.(tar\.zst|tzst)$/.test(file)) return 'zstd'
  if (/\.(tar\.xz|txz)$/.test(file)) return 'xz'
  throw new WafersError(
    `${file} does not end in .tar, .tar.gz, .tgz, .tar.zst or .tar.xz; wafers export names the format by it.`,
    {
      suggestions: ['Give FILE one of those endings, or - to write a plain tar to stdout.'],
    },
  )
}

/**
 * Writes `name`'s merged view (see withMergedView) as a plain root file system tarball (POSIX
 * format, numeric owners, xattrs and file capabilities, no whiteouts): what `machinectl
 * import-tar` and `podman import` take. GNU tar streams it to `file` or, for `-`, to stdout, in
 * constant memory. A file goes to a temporary name beside it first, so a failed export leaves no
 * half tarball; an existing one is replaced only with `force`. The store lock is held only while
 * the view is mounted: from then on the mount table shows its layers as a live stack's lower
 * layers, so rm, mv and a writable stack of them are refused until the export ends.
 */
export async function exportWafer(
  locations: Locations,
  name: string,
  file: string,
  options: {force?: boolean} = {},
): Promise<ExportResult> {
  checkName(name)
  checkRoot()
  const compression = compressionOf(file)
  const store = new WaferStore(locations.wafers)
  const target = file === '-' ? undefined : path.resolve(file)
  if (target !== undefined && !options.force && lstatSync(target, {throwIfNoEntry: false}) !== undefined) {
    throw new WafersError(`${file} already exists; nothing was exported.`, {
      suggestions: ['Add --force to replace it.'],
    })
  }

  // Asked before the stage is made, which would make a missing store: bad input changes nothing.
  if (!(await store.hasData(name))) throw new WafersError(`wafer ${name} not found in ${store.root}.`)
  const stage = await store.openStage(`export-${name}`)
  try {
    const {view, wafers} = await withLock(store.root, async () => {
      const inventory = await readInventory(store, {stacks: locations.stacks})
      if (!inventory.wafers.has(name)) throw new WafersError(`wafer ${name} not found in ${store.root}.`)
      const wafers = await traceAncestry(store, name)
      await refuseWritable(store, inventory, wafers, 'export')
      return {view: await mountMergedView(store, wafers, stage.held), wafers}
    })
    try {
      const bytes = await writeTar(view.root, target, compression)
      return {bytes, compression, file: target ?? '-', name, wafers}
    } finally {
      await view.unmount()
    }
  } finally {
    await discardStage(store.root, stage)
  }
}

/** Runs GNU tar on `root` into `target` (through a temporary file beside it) or stdout; the bytes written. */
async function writeTar(root: string, target: string | undefined, compression: Compression): Promise<number> {
  const args = [
    '--create',
    '--file=-',
    `--directory=${root}`,
    '--format=posix',
    '--numeric-owner',
    '--xattrs',
    '--xattrs-include=*',
    '--acls',
    '--sparse',
    // pax headers carry atime and ctime unless told not to: the same tree makes the same tarball.
    '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime',
    ...TAR_COMPRESSION[compression],
    '.',
  ]
  if (target === undefined) {
    await runTar(args, 'inherit')
    return 0
  }

  const temporary = path.join(path.dirname(target), `.${path.basename(target)}.${randomBytes(6).toString('hex')}.tmp`)
  let fd: number
  try {
    fd = openSync(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
  } catch {
    throw new WafersError(`cannot write in ${path.dirname(target)}; nothing was exported.`)
  }

  try {
    await runTar(args, fd)
    const bytes = fstatSync(fd).size
    closeSync(fd)
    fd = -1
    await fs.chmod(temporary, 0o644)
    await fs.rename(temporary, target)
    return bytes
  } catch (error) {
    if (fd !== -1) closeSync(fd)
    await fs.rm(temporary, {force: true})
    throw error
  }
}

/** Runs tar with its stdout on `out`; throws one sentence with the last line it said when it fails. */
function runTar(args: string[], out: 'inherit' | number): Promise<void> {
  return new Promise((resolve, reject) => {
    const tar = withUs('tar', args)
    const child = spawn(tar.file, tar.args, {stdio: ['ignore', out, 'pipe']})
    let said = ''
    child.stderr!.on('data', (chunk: Buffer) => {
      said = (said + chunk.toString()).slice(-4096)
    })
    child.on('error', () => reject(new WafersError('GNU tar is not installed or not on PATH; install tar.')))
    child.on('close', (code, signal) => {
      if (code === 0) {
        resolve()
        return
      }

      const last = said.trim().split('\n').at(-1) ?? ''
      reject(
        new WafersError(
          `tar failed${signal ? ` (${signal})` : ''}: ${last || `exit code ${code}`}; nothing was exported.`,
        ),
      )
    })
  })
}
