import type {Hook} from '@oclif/core'
import {existsSync} from 'node:fs'
import path from 'node:path'

/**
 * `wafers plugins install ./plugin.tgz` (or an absolute path, or a directory) installs that local
 * file: plugin-plugins takes anything with a slash for a GitHub repository and only knows `file:`.
 * Runs before every command's parse, so it stays tiny: a string test for all but plugins install.
 */
const hook: Hook<'preparse'> = async function ({argv, options}) {
  if ((options.context as undefined | {id?: string})?.id !== 'plugins:install') return argv
  return argv.map((arg) => (isLocalPath(arg) ? `file:${path.resolve(arg)}` : arg))
}

/** Whether a plugins install argument names something on this machine rather than npm or GitHub. */
export function isLocalPath(arg: string): boolean {
  if (arg.startsWith('-') || /^[a-z][\w+.-]*:/i.test(arg)) return false
  if (/^(\.{1,2}|~)?\//.test(arg) || arg === '.' || arg === '..') return true
  // A bare name like plugin.tgz or some-dir/ that is there (as npm install takes it).
  return (arg.endsWith('.tgz') || arg.endsWith('.tar.gz') || arg.includes('/')) && existsSync(arg)
}

export default hook
