import {accessSync, constants} from 'node:fs'
import path from 'node:path'

import {WafersError, asWafersError, isErrno} from './errors.js'

/** What a program printed, once it succeeded. */
export interface RunResult {
  stderr: string
  stdout: string
}

/**
 * Runs a program with an argument array (never a shell) and returns its output; a failure
 * becomes one sentence naming the program and what it said. For the short programs wafers runs
 * on every stack and build step (mount, umount): node's own spawn, since loading execa takes
 * longer than the mount itself; programs whose output streams go through execa (seed.ts).
 */
export async function run(file: string, args: string[], options: {cwd?: string} = {}): Promise<RunResult> {
  const {spawn} = await import('node:child_process')
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe']})
    const stdout: Buffer[] = []
    const stderr: Buffer[] = []
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk))
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk))
    child.on('error', (error) => {
      reject(
        isErrno(error, 'ENOENT')
          ? new WafersError(`${file} is not installed or not on PATH.`)
          : (asWafersError(error) as Error),
      )
    })
    child.on('close', (code, signal) => {
      const out = {
        stderr: Buffer.concat(stderr).toString().trimEnd(),
        stdout: Buffer.concat(stdout).toString().trimEnd(),
      }
      if (code === 0) {
        resolve(out)
        return
      }

      const said = (out.stderr || out.stdout || (signal ? `killed by ${signal}` : `exit code ${code}`))
        .split('\n')
        .at(-1)
      reject(new WafersError(`${file} failed: ${said?.trim()}`))
    })
  })
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
