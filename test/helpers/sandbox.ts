import {execa} from 'execa'
import {readlinkSync} from 'node:fs'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {MountEntry, mountAt, readMountTable} from '../../src/lib/host/mounts.js'

const bin = fileURLToPath(new URL('../../bin/run.js', import.meta.url))

/** What one run of the CLI did. */
export interface Run {
  exitCode: number
  stderr: string
  stdout: string
}

/**
 * Mount tests need root inside a private mount namespace (test/run.js sets that up). Elsewhere
 * they skip with a note, except under CI, where a mount test that cannot run fails.
 */
export function requireMounts(context: Mocha.Context): void {
  const reason = whyNoMounts()
  if (reason === undefined) return
  if (process.env.CI) throw new Error(`mount tests cannot run under CI: ${reason}`)
  console.warn(`      (skipped: ${reason})`)
  context.skip()
}

function whyNoMounts(): string | undefined {
  if (process.getuid?.() !== 0) return 'they need root; run `sudo npm test`'
  const host = process.env.WAFERS_TEST_HOST_MOUNT_NS
  if (!host || readlinkSync('/proc/self/ns/mnt') === host) {
    return 'they must run in a private mount namespace; run them with `npm test`'
  }

  return undefined
}

/**
 * Gives each test of the calling `describe` a fresh Sandbox through `use`, after checking that
 * mount tests can run (see requireMounts), and cleans it up after the test, mounts and all.
 */
export function useSandbox(use: (box: Sandbox) => void): void {
  let box: Sandbox | undefined
  beforeEach(async function () {
    requireMounts(this)
    box = await Sandbox.create()
    use(box)
  })

  afterEach(async function () {
    await box?.cleanup()
    box = undefined
  })
}

/** A temp WAFERS and STACKS, and the CLI run against them. */
export class Sandbox {
  private constructor(readonly root: string) {}

  get env(): Record<string, string> {
    // Plugins, too, come from the sandbox only, never from the machine's plugin directory. wafers
    // is "installed" on PATH as npm link would (`enable` writes units that run the installed one).
    return {
      PATH: `${this.installed}:${process.env.PATH ?? '/usr/bin:/bin'}`,
      STACKS: this.stacks,
      WAFERS: this.wafers,
      WAFERS_DATA_DIR: path.join(this.root, 'plugins'),
    }
  }

  /** A directory on the CLI's PATH holding `wafers`, a symlink to this checkout's bin/run.js. */
  get installed(): string {
    return path.join(this.root, 'usr', 'local', 'bin')
  }

  get stacks(): string {
    return path.join(this.root, 'stacks')
  }

  get wafers(): string {
    return path.join(this.root, 'wafers')
  }

  static async create(): Promise<Sandbox> {
    const box = new Sandbox(await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-test-')))
    await fs.mkdir(box.installed, {recursive: true})
    await fs.symlink(bin, path.join(box.installed, 'wafers'))
    return box
  }

  /** Unmounts whatever the test left under the sandbox, then deletes it. */
  async cleanup(): Promise<void> {
    const mounted = (await readMountTable()).filter((entry) => entry.mountpoint.startsWith(this.root + '/'))
    for (const entry of mounted.reverse()) {
      await execa('umount', ['-l', entry.mountpoint], {reject: false})
    }

    // GNU rm for what is deeper than PATH_MAX (Node's recursive rm fails there).
    await fs.rm(this.root, {force: true, recursive: true}).catch(async () => execa('rm', ['-rf', this.root]))
  }

  data(name: string, ...file: string[]): string {
    return path.join(this.wafers, name, 'data', ...file)
  }

  /** The mount at $STACKS/NAME, if any. */
  async mountOf(name: string): Promise<MountEntry | undefined> {
    return mountAt(await readMountTable(), this.stack(name))
  }

  /**
   * Mounts an overlay of wafers at `target` by hand, with absolute paths as the bash tool did:
   * `lowers` (nearest first) under `upper`, or read-only without one.
   */
  async mountByHand(target: string, lowers: string[], upper?: string): Promise<void> {
    let options = `lowerdir=${lowers.map((name) => this.data(name)).join(':')}`
    if (upper !== undefined) {
      const work = path.join(this.wafers, upper, 'work')
      await fs.mkdir(work, {recursive: true})
      options += `,upperdir=${this.data(upper)},workdir=${work}`
    }

    await fs.mkdir(target, {recursive: true})
    await execa('mount', ['-t', 'overlay', 'overlay', '-o', options, target])
  }

  /** Runs `wafers ARGS` as a user would, in a child process. */
  async run(args: string[], env: Record<string, string> = {}): Promise<Run> {
    const result = await execa(process.execPath, [bin, ...args], {
      env: {...this.env, ...env},
      reject: false,
      stdin: 'ignore',
    })
    return {exitCode: result.exitCode ?? -1, stderr: result.stderr, stdout: result.stdout}
  }

  /**
   * Runs `wafers ARGS` in a pseudo-terminal of `columns` columns (util-linux's script(1)), as a
   * person's shell would; returns what the screen shows, without escape sequences.
   */
  async inTerminal(args: string[], columns = 120, input = ''): Promise<{exitCode: number; screen: string}> {
    const command = [`stty cols ${columns};`, process.execPath, bin, ...args].join(' ')
    const run = await execa('script', ['-qec', command, '/dev/null'], {
      env: {...this.env, CI: '', TERM: 'xterm'},
      input,
      reject: false,
    })
    return {exitCode: run.exitCode ?? -1, screen: run.stdout.replaceAll(/\u001B\[[\d;?]*[A-Za-z]/g, '')}
  }

  stack(name: string, ...file: string[]): string {
    return path.join(this.stacks, name, ...file)
  }

  /**
   * Makes wafer `name` by hand, as the bash tool's users did: `data/` with `files`, and a
   * `parent` file when a parent is given (written without a trailing newline, as `echo -n` would).
   */
  async wafer(
    name: string,
    options: {files?: Record<string, string>; parent?: string; work?: boolean} = {},
  ): Promise<void> {
    const dir = path.join(this.wafers, name)
    await fs.mkdir(path.join(dir, 'data'), {recursive: true})
    if (options.work) await fs.mkdir(path.join(dir, 'work'))
    if (options.parent) await fs.writeFile(path.join(dir, 'parent'), options.parent)
    for (const [file, content] of Object.entries(options.files ?? {})) {
      const target = path.join(dir, 'data', file)
      await fs.mkdir(path.dirname(target), {recursive: true})
      await fs.writeFile(target, content)
    }
  }
}

/** Runs `command` in the root file system at `dir` with systemd-nspawn, as a user would here. */
export async function nspawnIn(
  dir: string,
  command: string[],
): Promise<{exitCode: number; stderr: string; stdout: string}> {
  const run = await execa('systemd-nspawn', ['--register=no', '--keep-unit', '--quiet', '-D', dir, ...command], {
    reject: false,
    stdin: 'ignore',
  })
  return {exitCode: run.exitCode ?? -1, stderr: run.stderr, stdout: run.stdout}
}

/**
 * A listing of everything under `dir` (path, type, mode, owner, size, link target, device), to
 * compare before and after a refusal: equal listings mean nothing was created, changed or lost.
 */
export async function snapshot(dir: string): Promise<string[]> {
  const lines: string[] = []
  async function walk(current: string): Promise<void> {
    let entries
    try {
      entries = await fs.readdir(current)
    } catch {
      return
    }

    for (const entry of entries.sort()) {
      const file = path.join(current, entry)
      const stat = await fs.lstat(file)
      const link = stat.isSymbolicLink() ? ` -> ${await fs.readlink(file)}` : ''
      const size = stat.isDirectory() ? '' : ` ${stat.size}B`
      lines.push(
        `${path.relative(dir, file)} ${stat.mode.toString(8)} ${stat.uid}:${stat.gid} rdev=${stat.rdev}${size}${link}`,
      )
      if (stat.isDirectory()) await walk(file)
    }
  }

  await walk(dir)
  return lines
}

/** True when `text` looks like it holds a JavaScript stack trace. */
export function hasStackTrace(text: string): boolean {
  return /^\s+at .*:\d+:\d+\)?$/m.test(text)
}

/** stderr as one line: oclif wraps error messages at the terminal width, behind " ›   ". */
export function said(stderr: string): string {
  return stderr.replaceAll(/ *\n ›\s+/g, ' ')
}

/** Every file under a wafer's data, as paths relative to it. */
export async function filesOf(box: Sandbox, wafer: string): Promise<string[]> {
  return (await snapshot(box.data(wafer))).map((line) => line.split(' ')[0])
}

/**
 * Seeds wafer `name` with the host's busybox (a root nspawn can run, offline) and makes an empty
 * build context directory in the sandbox; returns the context's path. Fails the test when seeding fails.
 */
export async function busyboxBase(box: Sandbox, name = 'bb'): Promise<string> {
  const seeded = await box.run(['create', name, '--seed', 'busybox'])
  if (seeded.exitCode !== 0) throw new Error(`seeding ${name} failed: ${seeded.stderr}`)
  const context = path.join(box.root, 'context')
  await fs.mkdir(context, {recursive: true})
  return context
}

/** What `wafers build --json` prints. */
export interface BuildJson {
  name: string
  steps: Array<{cached: boolean; instruction: string; wafer: null | string}>
}

/**
 * Writes `file` as CONTEXT/Containerfile and builds it into wafer `web` with --json. A failure's
 * message, which oclif prints as JSON on stdout, is added to stderr, where a user reads it.
 */
export async function buildWeb(
  box: Sandbox,
  context: string,
  file: string,
  ...args: string[]
): Promise<{json: BuildJson; run: Run}> {
  await fs.writeFile(path.join(context, 'Containerfile'), file)
  const run = await box.run(['build', '-t', 'web', '--json', ...args, context])
  if (run.exitCode !== 0) run.stderr += JSON.parse(run.stdout).error?.message ?? ''
  return {json: run.exitCode === 0 ? (JSON.parse(run.stdout) as BuildJson) : {name: '', steps: []}, run}
}
