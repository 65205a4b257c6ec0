import {accessSync, constants} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'

/** What a program printed, once it succeeded. */
export interface RunResult {
  stderr: string
  stdout: string
}

/**
 * Runs a program with an argument array (never a shell) and returns its output; a failure
 * becomes one sentence naming the program and what it said. execa is loaded only when needed.
 */
export async function run(file: string, args: string[], options: {cwd?: string} = {}): Promise<RunResult> {
  const {execa} = await import('execa')
  const result = await execa(file, args, {cwd: options.cwd, reject: false, stdin: 'ignore'})
  if (result.failed) {
    // mount(8) ends with a pointer to dmesg after the reason: the reason is the line to keep.
    const said = `${result.stderr || result.stdout || result.shortMessage}`
      .trim()
      .split('\n')
      .filter((line) => !line.includes('dmesg(1) may have more information'))
      .at(-1)
    if (result.code === 'ENOENT') {
      throw new WafersError(`${file} is not installed or not on PATH.`)
    }

    throw new WafersError(`${file} failed: ${said}`)
  }

  return {stderr: result.stderr, stdout: result.stdout}
}

/** Where the system keeps the programs wafers itself relies on (flock, setpriv), whatever PATH says. */
const SYSTEM_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']

/**
 * The path of util-linux program `name` wafers itself runs (flock, setpriv): found on PATH or in
 * the system's own directories, so that a seeder's PATH does not decide whether wafers can lock.
 */
export function systemProgram(name: string): string {
  const dirs = [...(process.env.PATH ?? '').split(':').filter((dir) => path.isAbsolute(dir)), ...SYSTEM_DIRS]
  for (const dir of dirs) {
    const file = path.join(dir, name)
    try {
      accessSync(file, constants.X_OK)
      return file
    } catch {
      // Not here.
    }
  }

  throw new WafersError(`${name} is not installed; install util-linux.`)
}
