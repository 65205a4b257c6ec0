/**
 * An image's run settings where systemd-nspawn reads them: `$STACKS/NAME.nspawn`
 * (systemd.nspawn(5)), beside the stack, as importctl pull-oci writes one. `systemd-nspawn -M
 * NAME` (and machinectl start) then runs the image's entrypoint and command with its environment,
 * user, working directory and stop signal, as `podman run` would. nspawn reads a settings file
 * found beside the image with its privileged settings ignored; these five are not privileged.
 */
import {lstatSync, promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {readStoreFile, unlinkIfPresent, writeFileAtomic} from '../host/files.js'
import {type ImageConfig, readMeta} from '../store/meta.js'
import {type Locations, PRIVATE_DIR_MODE, WaferStore} from '../store/store.js'

/** The first line of every settings file wafers writes: files without it are the user's own. */
const HEADER = '# Written by wafers from the image config'

/** Where nspawn finds the settings of machine `name`. */
export function settingsPath(stacks: string, name: string): string {
  return path.join(stacks, `${name}.nspawn`)
}

/**
 * Quotes one word as nspawn's settings parser splits Parameters= (systemd's extract_first_word
 * with quotes removed and backslashes kept as they are): a double quote cannot be escaped, so a
 * word holding one is made of double-quoted pieces joined by a single-quoted '"'.
 */
function quoteWord(word: string): string {
  if (word !== '' && /^[\w./:@%+=,-]+$/.test(word)) return word
  return word
    .split('"')
    .map((piece) => `"${piece}"`)
    .join(`'"'`)
}

const SIGNALS: Record<string, string> = {
  1: 'SIGHUP',
  2: 'SIGINT',
  3: 'SIGQUIT',
  9: 'SIGKILL',
  10: 'SIGUSR1',
  12: 'SIGUSR2',
  15: 'SIGTERM',
  28: 'SIGWINCH',
}

/** An image's StopSignal ("SIGQUIT", "QUIT", "3") as systemd names it, or undefined if unknown. */
function signalName(signal: string): string | undefined {
  const text = signal.trim().toUpperCase()
  if (/^\d+$/.test(text)) return SIGNALS[text]
  if (/^(SIG)?[A-Z0-9+-]+$/.test(text)) return text.startsWith('SIG') ? text : `SIG${text}`
  return undefined
}

/**
 * The text of NAME.nspawn for an image config (`source` names the image in the header). Values
 * a settings file cannot carry (a newline in an environment value) are left out, said in a
 * comment; a numeric User (uid or uid:gid, which nspawn's User= does not take) too.
 */
export function settingsText(config: ImageConfig, source: string): string {
  const shownSource = fitsOneLine(source) ? source : 'an image'
  const lines = [`${HEADER} of ${shownSource}; wafers rewrites it. Delete this line to keep your edits.`, '[Exec]']
  const command = [...(config.Entrypoint ?? []), ...(config.Cmd ?? [])]
  // nspawn takes Parameters= from a settings file only together with a start mode (systemd 262).
  if (!command.every((word) => fitsOneLine(word)))
    lines.push('# left out: a command with a control character, which Parameters= cannot hold')
  else if (command.length > 0) lines.push('Boot=no', `Parameters=${command.map((word) => quoteWord(word)).join(' ')}`)
  for (const entry of config.Env ?? []) {
    if (!fitsOneLine(entry) || !entry.includes('='))
      lines.push(`# left out: an environment entry a settings line cannot hold`)
    else lines.push(`Environment=${quoteWord(entry)}`)
  }

  if (config.User) {
    if (/^[a-z_][\w.-]*\$?$/i.test(config.User)) lines.push(`User=${config.User}`)
    else if (fitsOneLine(config.User))
      lines.push(`# left out: User=${config.User} (nspawn's User= takes a user name only)`)
    else lines.push(`# left out: a User a settings line cannot hold`)
  }

  if (config.WorkingDir && fitsOneLine(config.WorkingDir)) lines.push(`WorkingDirectory=${config.WorkingDir}`)
  const signal = config.StopSignal === undefined ? undefined : signalName(config.StopSignal)
  if (signal) lines.push(`KillSignal=${signal}`)
  return `${lines.join('\n')}\n`
}

/**
 * Whether a value can stand in one settings line: systemd ends a line at a carriage return and a
 * NUL as well as a newline, so any control character could start a line or a section of its own.
 */
function fitsOneLine(value: string): boolean {
  return !/[\u0000-\u001f\u007f]/.test(value)
}

/** Whether `file` is a settings file wafers wrote (absent counts as ours: free to write). */
function isOurs(file: string): boolean {
  const stat = lstatSync(file, {throwIfNoEntry: false})
  if (stat === undefined) return true
  if (!stat.isFile()) return false
  return (readStoreFile(file, 'a machine settings file') ?? '').startsWith(HEADER)
}

/**
 * Writes $STACKS/NAME.nspawn for `config`; refuses to replace one the user wrote (or anything
 * that is not a regular file), saying so. Returns the file's path.
 */
export async function writeSettings(
  stacks: string,
  name: string,
  config: ImageConfig,
  source: string,
): Promise<string> {
  const file = settingsPath(stacks, name)
  if (!isOurs(file)) {
    throw new WafersError(`${file} is not one wafers wrote; it is left as it is.`, {
      suggestions: ['Remove it to have wafers write the image settings, or pass --no-settings.'],
    })
  }

  await fs.mkdir(stacks, {mode: PRIVATE_DIR_MODE, recursive: true})
  writeFileAtomic(file, settingsText(config, source))
  return file
}

/** Removes $STACKS/NAME.nspawn if wafers wrote it; true if it did. */
export async function removeSettings(stacks: string, name: string): Promise<boolean> {
  const file = settingsPath(stacks, name)
  if (lstatSync(file, {throwIfNoEntry: false}) === undefined || !isOurs(file)) return false
  return unlinkIfPresent(file)
}

/**
 * Writes the settings of the image wafer `name` holds (a pulled or built top, whose meta.json
 * carries the image config) to $STACKS/NAME.nspawn; undefined when it holds no image.
 */
export async function writeImageSettings(locations: Locations, name: string): Promise<string | undefined> {
  const store = new WaferStore(locations.wafers)
  const image = readMeta(store.dir(name), name).image
  if (image === undefined) return undefined
  return writeSettings(locations.stacks, name, image.config ?? {}, image.ref ?? name)
}
