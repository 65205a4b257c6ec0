import {WafersError} from './errors.js'

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
    const said = `${result.stderr || result.stdout || result.shortMessage}`.trim().split('\n').at(-1)
    if (result.code === 'ENOENT') {
      throw new WafersError(`${file} is not installed or not on PATH.`)
    }

    throw new WafersError(`${file} failed: ${said}`)
  }

  return {stderr: result.stderr, stdout: result.stdout}
}
