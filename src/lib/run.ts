import {spawn} from 'node:child_process'

import {WafersError, isErrno} from './errors.js'

/** What a program printed, once it succeeded (each without its final newline). */
export interface RunResult {
  stderr: string
  stdout: string
}

/**
 * Runs a program with an argument array (never a shell) and no stdin, and returns its output; a
 * failure becomes one sentence naming the program and what it said.
 *
 * Plain node:child_process, not execa: loading and calling execa cost ~15 ms of CPU per mount
 * or unmount (bench/RESULTS.md), more than the mount itself, and this needs none of its extras.
 */
export async function run(file: string, args: string[], options: {cwd?: string} = {}): Promise<RunResult> {
  const child = spawn(file, args, {cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe']})
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk
  })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk
  })
  let exit: {code: null | number; signal: NodeJS.Signals | null}
  try {
    exit = await new Promise((resolve, reject) => {
      child.once('error', reject)
      child.once('close', (code, signal) => resolve({code, signal}))
    })
  } catch (error) {
    if (isErrno(error, 'ENOENT')) throw new WafersError(`${file} is not installed or not on PATH.`)
    throw new WafersError(`${file} could not run: ${(error as Error).message}`)
  }

  if (exit.code !== 0) {
    const status = exit.signal ? `killed by ${exit.signal}` : `exit code ${exit.code}`
    const said = `${stderr.trim() || stdout.trim() || status}`.split('\n').at(-1)
    throw new WafersError(`${file} failed: ${said}`)
  }

  return {stderr: stripFinalNewline(stderr), stdout: stripFinalNewline(stdout)}
}

function stripFinalNewline(text: string): string {
  return text.replace(/\r?\n$/, '')
}
