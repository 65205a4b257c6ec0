/**
 * How a build ends: the wafer NAME made, or re-pointed, on the last stage's top, with the image
 * config and history `wafers push` sends; and when re-pointing an existing NAME is refused.
 */
import {promises as fs, lstatSync, readdirSync} from 'node:fs'

import {WafersError, isErrno} from '../errors.js'
import {liveStacks} from '../mount/usage.js'
import {traceAncestry} from '../store/ancestry.js'
import {withLock} from '../store/lock.js'
import {type HistoryEntry, type ImageConfig, type ImageMeta, readMeta, writeMeta} from '../store/meta.js'
import type {Stage as StoreStage} from '../store/staging.js'
import {WaferExistsError, WaferStore} from '../store/store.js'

/** What the last stage of a build ends in. */
export interface BuildEnd {
  config: ImageConfig
  history: HistoryEntry[]
  image: {architecture: string; os: string; variant?: string}
  /** The stage's top wafer; undefined when it is empty (FROM scratch). */
  top?: string
}

/** Makes NAME an empty wafer on the last stage's top, with the image config; re-points it when it exists. */
export async function finishBuild(
  store: WaferStore,
  name: string,
  context: string,
  stage: BuildEnd,
  within: () => Promise<StoreStage>,
): Promise<string> {
  const image: ImageMeta = {
    architecture: stage.image.architecture,
    config: stage.config,
    history: stage.history,
    os: stage.image.os,
    ref: `build:${context}`,
    ...(stage.image.variant ? {variant: stage.image.variant} : {}),
  }
  const parent = stage.top
  const endsOnRemoved = () =>
    new WafersError(
      `wafer ${parent}, which this build ends on, was removed while the build ran; ${name} is left as it was: build again.`,
    )
  if (parent !== undefined) {
    // Outside the lock (a build whose every step was cached holds no stage): rm or prune may race it.
    const below = await traceAncestry(store, parent).catch(async (error: unknown) => {
      if (!(await store.hasData(parent))) throw endsOnRemoved()
      throw error
    })
    if (below.includes(name)) {
      throw new WafersError(`wafer ${name} is below the result of the build itself; give the build another name.`)
    }
  }

  if (!(await store.exists(name))) {
    try {
      await store.create(name, parent, {
        meta: {image},
        parentData: parent === undefined ? undefined : store.dataDir(parent),
        within: await within(),
      })
      return `Created wafer ${name}${parent ? ` on ${parent}` : ''}`
    } catch (error) {
      // Another build of NAME made it meanwhile: from here on, as if it had been there before.
      if (!(error instanceof WaferExistsError)) throw error
    }
  }

  const dir = store.dir(name)
  // Nothing to re-point: an unchanged rebuild is fine even when NAME holds files of its own.
  const same =
    readMeta(dir, name).image?.ref?.startsWith('build:') &&
    (await store.readParent(name)) === parent &&
    JSON.stringify(readMeta(dir, name).image) === JSON.stringify(image)
  if (same) return `Wafer ${name} is already on ${parent ?? 'nothing'}`
  await checkRepointable(store, name)
  await withLock(store.root, async () => {
    await checkRepointable(store, name)
    // A build whose every step was cached holds no stage, so prune may have removed its last step.
    if (parent !== undefined && !(await store.hasData(parent))) throw endsOnRemoved()

    await store.writeParent(name, parent)
    writeMeta(dir, {...readMeta(dir, name), image})
  })
  return `Pointed wafer ${name} at ${parent ?? 'nothing'}`
}

/**
 * Refuses NAME when a wafer of that name exists and was not made by wafers build: checked before
 * the first step runs, and again when NAME is re-pointed.
 */
export function checkBuildTarget(store: WaferStore, name: string): void {
  if (lstatSync(store.dir(name), {throwIfNoEntry: false}) === undefined) return
  const meta = readMeta(store.dir(name), name)
  if (!meta.image?.ref?.startsWith('build:')) {
    throw new WafersError(`wafer ${name} exists and was not made by wafers build; it is left as it is.`, {
      suggestions: ['Give the build another name with -t.'],
    })
  }
}

/** Refuses to re-point NAME when it was not made by a build, holds files, or is stacked. */
async function checkRepointable(store: WaferStore, name: string): Promise<void> {
  checkBuildTarget(store, name)

  let entries: string[]
  try {
    entries = await fs.readdir(store.dataDir(name))
  } catch (error) {
    if (isErrno(error, 'ENOENT')) throw new WafersError(`wafer ${name} has no data directory.`)
    throw error
  }

  if (entries.length > 0) {
    throw new WafersError(
      `wafer ${name} holds changes of its own (${entries.slice(0, 3).join(', ')}${entries.length > 3 ? ', ...' : ''}); rebuilding would put them on another base, so it is left as it is.`,
      {suggestions: [`Give the build another name with -t, or remove ${name} first (wafers rm ${name}).`]},
    )
  }

  const children: string[] = []
  for (const wafer of await store.list()) {
    if ((await store.readParent(wafer)) === name) children.push(wafer)
  }

  if (children.length > 0) {
    throw new WafersError(
      `wafer ${name} is the parent of ${children.join(', ')}; re-pointing it would move ${children.length === 1 ? 'that wafer' : 'those wafers'} onto the new base, so it is left as it is.`,
      {suggestions: ['Give the build another name with -t.']},
    )
  }

  const live = (await liveStacks(store)).filter((stack) => stack.top === name || stack.lowers.includes(name))
  if (live.length > 0) {
    throw new WafersError(
      `wafer ${name} is stacked at ${live.map((stack) => stack.mountpoint).join(', ')}; unstack it before rebuilding it.`,
    )
  }
}

/**
 * The history entry of a step that made a wafer: `empty_layer` when the step changed nothing, as
 * `wafers push` sends such a wafer as a history entry without a layer.
 */
export function historyEntry(text: string, data: string): HistoryEntry {
  return readdirSync(data).length === 0 ? {created_by: text, empty_layer: true} : {created_by: text}
}
