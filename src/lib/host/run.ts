import {accessSync, constants, statSync} from 'node:fs'
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
  const program = findOnPath(file)
  if (program === undefined) throw new WafersError(`${file} is not installed or not on PATH.`)
  const child = diesWithUs(program, args)
  const result = await execa(child.file, child.args, {cwd: options.cwd, reject: false, stdin: 'ignore'})
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

/**
 * The command line that runs `program` (an absolute path, see findOnPath) so that the kernel kills
 * it when wafers ends, however wafers ends (kill -9 included): setpriv sets its parent-death signal,
 * which Node cannot, then execs the program in the same process. Every program wafers starts goes
 * through this, so none is left writing into the store after wafers is gone. `prefix` runs between
 * the two (prlimit, say), exec'ing in turn.
 */
export function diesWithUs(program: string, args: string[], prefix: string[] = []): {args: string[]; file: string} {
  return {args: ['--pdeathsig', 'KILL', '--', ...prefix, program, ...args], file: systemProgram('setpriv')}
}

/**
 * The absolute path of executable `file` on `searchPath` (PATH by default), or `file` itself when
 * it names a path; undefined when there is none. Resolved before the start, since a program run
 * through diesWithUs that is missing would only show as setpriv's failure.
 */
export function findOnPath(file: string, searchPath = process.env.PATH ?? ''): string | undefined {
  const candidates = file.includes('/')
    ? [file]
    : searchPath
        .split(':')
        .filter((dir) => dir !== '')
        .map((dir) => path.join(dir, file))
  for (const candidate of candidates) {
    try {
      if (!statSync(candidate).isFile()) continue
      accessSync(candidate, constants.X_OK)
      return path.resolve(candidate)
    } catch {
      // Not here.
    }
  }

  return undefined
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
