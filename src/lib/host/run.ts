import {accessSync, constants, statSync} from 'node:fs'
import path from 'node:path'

import {WafersError, asWafersError, isErrno} from '../errors.js'
import type {SeedRunOptions, SeedRunResult} from '../hooks.js'

/** What a program printed, once it succeeded. */
export interface RunResult {
  stderr: string
  stdout: string
}

/** The most a program run by `run` may print on each stream before it is stopped (as execa's maxBuffer). */
const MAX_OUTPUT = 64 * 1024 * 1024

/**
 * Runs a program with an argument array (never a shell) and returns its output, each stream with
 * one final newline cut; a failure becomes one sentence naming the program and what it said.
 * Node's own spawn, not execa: every `stack` and `unstack` runs mount or umount, and loading execa
 * cost more than the mount itself (about 90 million instructions, a tenth of the whole command).
 */
export async function run(file: string, args: string[], options: {cwd?: string} = {}): Promise<RunResult> {
  const program = findOnPath(file)
  if (program === undefined) throw new WafersError(`${file} is not installed or not on PATH.`)
  const {spawn} = await import('node:child_process')
  const child = diesWithUs(program, args)
  const output = {stderr: [] as Buffer[], stdout: [] as Buffer[]}
  const printed = {stderr: 0, stdout: 0}
  let overflow = false
  const ended = await new Promise<{code: null | number; error?: Error; signal: NodeJS.Signals | null}>((resolve) => {
    let started: ReturnType<typeof spawn>
    try {
      started = spawn(child.file, child.args, {cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe']})
    } catch (error) {
      // Node refuses some arguments (a NUL byte in one) before anything starts.
      resolve({code: null, error: error as Error, signal: null})
      return
    }

    for (const stream of ['stdout', 'stderr'] as const) {
      started[stream]!.on('data', (chunk: Buffer) => {
        printed[stream] += chunk.length
        if (printed[stream] > MAX_OUTPUT) {
          overflow = true
          started.kill('SIGKILL')
          return
        }

        output[stream].push(chunk)
      })
    }

    started.once('error', (error) => resolve({code: null, error, signal: null}))
    started.once('close', (code, signal) => resolve({code, signal}))
  })
  const text = (chunks: Buffer[]) =>
    Buffer.concat(chunks)
      .toString('utf8')
      .replace(/\r?\n$/, '')
  const result = {stderr: text(output.stderr), stdout: text(output.stdout)}
  if (ended.error !== undefined) {
    if (isErrno(ended.error, 'ENOENT')) throw new WafersError(`${file} is not installed or not on PATH.`)
    const sentence = asWafersError(ended.error)
    throw sentence instanceof WafersError
      ? sentence
      : new WafersError(`${file} could not be started: ${ended.error.message.split('\n')[0].replace(/\.$/, '')}.`)
  }

  if (overflow) throw new WafersError(`${file} printed more than ${MAX_OUTPUT / 1024 / 1024} MiB and was stopped.`)
  if (ended.code !== 0) {
    const how = ended.signal ? `was killed by ${ended.signal}` : `exited with code ${ended.code}`
    // mount(8) ends with a pointer to dmesg after the reason: the reason is the line to keep.
    const said = `${result.stderr || result.stdout}`
      .trim()
      .split('\n')
      .filter((line) => !line.includes('dmesg(1) may have more information'))
      .at(-1)
    throw new WafersError(`${file} failed: ${said || how}`)
  }

  return result
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
 * diesWithUs for `file` looked up on PATH. A program that is not there is left as it is, so
 * starting it fails as before (ENOENT), and the caller's sentence for a missing program stands.
 */
export function withUs(file: string, args: string[]): {args: string[]; file: string} {
  const program = findOnPath(file)
  return program === undefined ? {args, file} : diesWithUs(program, args)
}

/**
 * The absolute path of executable `file` on `searchPath` (PATH by default), or `file` itself when
 * it names a path, as found there (a link is not followed), the first one `accept` takes;
 * undefined when there is none. Resolved before the start, since a program run
 * through diesWithUs that is missing would only show as setpriv's failure.
 */
export function findOnPath(
  file: string,
  searchPath = process.env.PATH ?? '',
  accept: (found: string) => boolean = () => true,
): string | undefined {
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
      const found = path.resolve(candidate)
      if (accept(found)) return found
    } catch {
      // Not here.
    }
  }

  return undefined
}

/** The Debian packages of the system programs that util-linux does not bring. */
const SYSTEM_PACKAGES: Record<string, string> = {cat: 'coreutils', find: 'findutils', rm: 'coreutils'}

/** Where the system keeps the programs wafers itself relies on (flock, setpriv, rm), looked in after PATH. */
const SYSTEM_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']

/**
 * The path of system program `name` wafers itself runs (flock, setpriv, rm, cat): found on PATH or
 * in the system's own directories, so that a seeder's PATH does not decide whether wafers can lock.
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

  throw new WafersError(`${name} is not installed; install ${SYSTEM_PACKAGES[name] ?? 'util-linux'}.`)
}

const TAIL_LINES = 50

/** A program saying it ran out of space (cp, tar, dpkg all say it this way). */
const NO_SPACE = /No space left on device/

/** A program stopped because it reported that its file system is full. */
export class NoSpaceError extends WafersError {}

/**
 * Runs a program with an argument array, streaming each line it prints to `report`; refuses
 * failures in one sentence with the last thing it said. Node's own spawn, not execa as elsewhere:
 * a build starts one per RUN step, and execa's streaming cost 10-20 ms more per start (measured in
 * one process against the same nspawn run bare), a tenth of a RUN step and its whole budget.
 */
export async function runStreaming(
  file: string,
  args: string[],
  report: (line: string) => void,
  options: SeedRunOptions & {inherit?: number[]; name?: string; stopSignal?: NodeJS.Signals} = {},
  cancel?: AbortSignal,
): Promise<SeedRunResult> {
  const {spawn} = await import('node:child_process')
  const tail: string[] = []
  const program = findOnPath(file, options.env?.PATH ?? process.env.PATH ?? '')
  const missing = () => {
    const hint = options.package ? `; install the ${options.package} package` : ''
    return new WafersError(`${file} is not installed or not on PATH${hint}.`)
  }

  if (program === undefined) throw missing()
  // The kernel ends the program when wafers ends (diesWithUs). It also holds the descriptors in
  // `inherit` (the locks of the stages being filled), as does anything it starts, so no stage is
  // swept while they write.
  const wrapped = diesWithUs(program, args)
  const child = spawn(wrapped.file, wrapped.args, {
    cwd: options.cwd,
    env: options.env ? {...process.env, ...options.env} : process.env,
    stdio: ['ignore', 'pipe', 'pipe', ...(options.inherit ?? [])],
  })
  let canceled = false
  let full = false
  let killer: NodeJS.Timeout | undefined
  // Stopped with `stopSignal` (SIGTERM: a seeder's program may clean up), and with SIGKILL if it
  // is still there after a grace period (unshare --fork, for one, blocks SIGTERM).
  const halt = () => {
    child.kill(options.stopSignal ?? 'SIGTERM')
    killer ??= setTimeout(() => child.kill('SIGKILL'), 3000)
  }

  const stop = () => {
    canceled = true
    halt()
  }

  cancel?.addEventListener('abort', stop)
  if (cancel?.aborted) stop()
  const onLine = (line: string) => {
    if (full) return
    const text = line.replace(/\r$/, '')
    if (NO_SPACE.test(text)) {
      // One sentence instead of one line per file that could not be written: stop it now.
      full = true
      halt()
      return
    }

    tail.push(text)
    if (tail.length > TAIL_LINES) tail.shift()
    report(text)
  }

  // Lines end at \n only (a progress bar's lone \r does not end one), as the tail has always counted them.
  for (const stream of [child.stdout, child.stderr]) {
    let partial = ''
    stream?.setEncoding('utf8')
    stream?.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n')
      partial = lines.pop() ?? ''
      for (const line of lines) onLine(line)
    })
    stream?.on('end', () => {
      if (partial !== '') onLine(partial)
      partial = ''
    })
  }

  const ended = await new Promise<{code: null | number; error?: Error; signal: NodeJS.Signals | null}>((resolve) => {
    child.once('error', (error) => resolve({code: null, error, signal: null}))
    child.once('close', (code, signal) => resolve({code, signal}))
  }).finally(() => {
    clearTimeout(killer)
    cancel?.removeEventListener('abort', stop)
  })

  const name = options.name ?? file
  if (full) throw new NoSpaceError(`${name} ran out of space: no space is left on the file system it writes to.`)
  if (ended.error) {
    if (isErrno(ended.error, 'ENOENT')) throw missing()
    throw asWafersError(ended.error)
  }

  if (canceled) throw new WafersError(`${file} was stopped.`)
  const exitCode = ended.code ?? 1
  if (exitCode !== 0 && options.check !== false) {
    const last = ended.signal ? `killed by ${ended.signal}` : 'no output'
    const said = tail.filter((line) => line.trim() !== '').at(-1) ?? last
    throw new WafersError(`${file} failed (exit code ${exitCode}): ${said.trim()}`)
  }

  return {exitCode, tail}
}
