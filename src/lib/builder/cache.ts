/**
 * The build cache: what a step's result depends on (its key), the wafer it is kept in, and the
 * probe that finds it there, or the name to make it under.
 */
import {createHash} from 'node:crypto'
import {lstatSync} from 'node:fs'

import {WafersError} from '../errors.js'
import {readMeta} from '../store/meta.js'
import {WaferStore} from '../store/store.js'

/** Bumped when what a step makes from the same inputs changes, so old cached wafers are not reused. */
const CACHE_VERSION = 1

/** Everything a step's result depends on. */
export interface StepKeyInput {
  /** What the parent is: a step wafer's name, or a base wafer's name and identity. */
  parent: string
  /** What the step copies: a digest of its sources, or the stage it copies from. */
  sources?: string
  /** The state RUN and COPY see: Env, User, WorkingDir, Shell, build args in scope. */
  state: unknown
  /** The instruction as written. */
  text: string
}

/** The cache key of a step: a sha256 of everything its result depends on. */
export function stepKey(input: StepKeyInput): string {
  return createHash('sha256')
    .update(JSON.stringify([CACHE_VERSION, input.parent, input.text, input.state, input.sources ?? null]))
    .digest('hex')
}

/**
 * The wafer a step with `key` makes: `build-` and 40 hex digits of the key (a machine name).
 * `--no-cache` makes generation n+1 beside generation n (which may be in use), and a later build
 * takes the newest generation, so a rebuild forced with --no-cache is what the cache holds next.
 */
export function stepWaferName(key: string, generation = 0): string {
  const id = generation === 0 ? key : createHash('sha256').update(`${key}/${generation}`).digest('hex')
  return `build-${id.slice(0, 40)}`
}

/** The newest generation of the step with `key` in the store (see stepWaferName), or -1 for none. */
export async function newestGeneration(store: WaferStore, key: string): Promise<number> {
  let generation = -1
  while (await store.exists(stepWaferName(key, generation + 1))) generation++
  return generation
}

/**
 * Whether wafer `name` is the cached result of the step with `key` on `parent`: it exists, its
 * meta.json records that key, and its parent is that parent. A wafer under the name that is not
 * is refused, since the step cannot be made beside it.
 */
export async function isCached(
  store: WaferStore,
  name: string,
  key: string,
  parent: string | undefined,
): Promise<boolean> {
  if (!(await store.exists(name))) return false
  const recorded = readMeta(store.dir(name), name).build?.key
  const actualParent = await store.readParent(name)
  if (recorded === key && actualParent === parent && (await store.hasData(name))) return true
  // Removed while it was read (rm, prune): nothing is in the way any more.
  if (!(await store.exists(name))) return false
  throw new WafersError(`wafer ${name} is in the way of a build step: it is not that step's cached result.`, {
    suggestions: [`Remove it with: wafers rm ${name}`],
  })
}

/**
 * What a base wafer (one FROM names) is, for the cache: its chain of wafers with their data
 * directories' inodes and birth times, so that a wafer removed and made again, or re-pointed, is
 * not taken for the old one. Build step wafers are named by their key and stand for themselves.
 */
export function baseIdentity(store: WaferStore, chain: string[]): string {
  return chain
    .map((name) => {
      if (name.startsWith('build-') && readMeta(store.dir(name), name).build) return name
      const stat = lstatSync(store.dataDir(name))
      return `${name}:${stat.ino}:${stat.birthtimeMs}:${stat.ctimeMs}`
    })
    .join('/')
}

/**
 * The wafer of the step with `key` on `parent`, and whether it is cached: the newest generation
 * when it is that step's result (see isCached), else the name of the next generation to make
 * (always that one under --no-cache).
 */
export async function probeStep(
  store: WaferStore,
  key: string,
  parent: string | undefined,
  noCache = false,
): Promise<{cached: boolean; name: string}> {
  const generation = await newestGeneration(store, key)
  const newest = stepWaferName(key, Math.max(generation, 0))
  if (!noCache && generation >= 0 && (await isCached(store, newest, key, parent))) {
    return {cached: true, name: newest}
  }

  return {cached: false, name: generation >= 0 ? stepWaferName(key, generation + 1) : newest}
}
