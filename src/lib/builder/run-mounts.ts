/**
 * RUN --mount: what each mount is (cache, bind, secret), where its host side is, and how its mount
 * point is kept out of the layer (as buildah keeps it out: the directories above it stay, it goes).
 */
import {createHash} from 'node:crypto'
import {promises as fs, lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {type Lock, lockDirectory} from '../store/lock.js'
import {mkdirIn} from './copy.js'
import {containerPath, resolveInRoot} from './paths.js'

/** One `--mount=type=...,...` of a RUN, as written. */
export interface RunMount {
  /** `from=`: a stage or wafer a bind mount reads from (the context when undefined). */
  from?: string
  /** The cache's or the secret's id. */
  id?: string
  readOnly: boolean
  /** `source=`: the path in the context or stage (bind), or nothing. */
  source?: string
  /** The absolute container path it is mounted on. */
  target: string
  type: 'bind' | 'cache' | 'secret'
}

/** A mount as nspawn binds it: host path, container path, read-only or not. */
export interface Bind {
  host: string
  readOnly: boolean
  target: string
}

/** Splits leading `--mount=` flags off a RUN's arguments; the rest is the command. */
export function takeMounts(args: string, line: number, workdir?: string): {mounts: RunMount[]; rest: string} {
  const mounts: RunMount[] = []
  let rest = args
  for (;;) {
    const match = /^--mount=(\S+)(?:\s+|$)/.exec(rest)
    if (!match) break
    mounts.push(parseMount(match[1], line, workdir))
    rest = rest.slice(match[0].length)
  }

  return {mounts, rest}
}

function parseMount(text: string, line: number, workdir?: string): RunMount {
  const fields = new Map<string, string>()
  for (const part of text.split(',')) {
    const eq = part.indexOf('=')
    fields.set((eq === -1 ? part : part.slice(0, eq)).toLowerCase(), eq === -1 ? 'true' : part.slice(eq + 1))
  }

  const bad = (why: string) => new WafersError(`line ${line}: RUN --mount=${text}: ${why}.`)
  const type = fields.get('type') ?? 'bind'
  if (type !== 'bind' && type !== 'cache' && type !== 'secret')
    throw bad(`wafers mounts type=bind, type=cache and type=secret, not type=${type}`)
  const known = new Set([
    'type',
    'target',
    'dst',
    'destination',
    'source',
    'src',
    'from',
    'id',
    'ro',
    'readonly',
    'rw',
    'readwrite',
    'required',
  ])
  for (const key of fields.keys()) if (!known.has(key)) throw bad(`${key}= is not supported`)
  const id = fields.get('id')
  let target = fields.get('target') ?? fields.get('dst') ?? fields.get('destination')
  if (target === undefined && type === 'secret' && id !== undefined) target = `/run/secrets/${id}`
  if (target === undefined || target === '') throw bad('it needs target=PATH')
  const rw = ['rw', 'readwrite'].some((key) => fields.get(key) === 'true')
  if (type === 'bind' && rw)
    throw bad('a writable bind mount (its writes thrown away afterwards) is not supported; leave out rw')
  if (type === 'secret' && id === undefined) throw bad('it needs id=NAME')
  const absolute = containerPath(target, workdir)
  if (/[:,\\\s]/.test(absolute)) throw bad('the target holds a character nspawn cannot bind to')
  return {
    from: fields.get('from'),
    id,
    readOnly: type === 'secret' || type === 'bind' || ['ro', 'readonly'].some((key) => fields.get(key) === 'true'),
    source: fields.get('source') ?? fields.get('src'),
    target: absolute,
    type,
  }
}

/**
 * The directory that holds the cache `id` of the store at `wafersRoot` ($WAFERS/.cache/build/ID),
 * made when missing, each component checked to be a directory (no link), and locked until release.
 */
export async function openCache(wafersRoot: string, id: string): Promise<{dir: string; lock: Lock}> {
  const name = createHash('sha256').update(id).digest('hex').slice(0, 32)
  let dir = wafersRoot
  for (const part of ['.cache', 'build', name]) {
    dir = path.join(dir, part)
    await fs.mkdir(dir, {mode: 0o755}).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error
    })
    if (!lstatSync(dir).isDirectory())
      throw new WafersError(`${dir} is not a directory (a link?); it is not used as a cache.`)
  }

  const lock = await lockDirectory(dir)
  if (lock === undefined) throw new WafersError(`the build cache ${dir} cannot be opened.`)
  return {dir, lock}
}

/**
 * Makes the directories above each mount point in `root` (they stay in the layer, as buildah's
 * do) and returns a function that removes afterwards the mount points nspawn had to make.
 */
export async function prepareMountPoints(root: string, binds: Bind[]): Promise<() => Promise<void>> {
  const made: string[] = []
  for (const bind of binds) {
    await mkdirIn(root, path.posix.dirname(bind.target))
    const at = resolveInRoot(root, bind.target, false)
    if (lstatSync(at, {throwIfNoEntry: false}) === undefined) made.push(at)
  }

  return async () => {
    for (const at of made.reverse()) {
      const stat = lstatSync(at, {throwIfNoEntry: false})
      if (stat?.isDirectory()) await fs.rmdir(at).catch(() => {})
      else if (stat?.isFile() && stat.size === 0) await fs.rm(at)
    }
  }
}
