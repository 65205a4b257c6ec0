import {promises as fs} from 'node:fs'
import path from 'node:path'

import {traceAncestry} from '../store/ancestry.js'
import {WafersError, isErrno, shown} from '../errors.js'
import {type HistoryEntry, type ImageMeta, readMeta} from '../store/meta.js'
import {checkName} from '../store/names.js'
import {humanSize} from '../ui/render.js'
import type {Step} from '../steps.js'
import {Locations, WaferStore} from '../store/store.js'
import {checkRoot} from '../host/system.js'
import {writeFileAtomic} from '../host/files.js'
import {liveStacks} from '../mount/usage.js'
import {LayerCache} from './cache.js'
import {blankMachineId, hasMachineId, onlyMachineId} from './machine-id.js'
import {Descriptor, ImageConfigFile, MEDIA, Manifest} from './image.js'
import {hostPlatform} from './platform.js'
import {blobPath, writeJsonBlob, writeLayoutIndex} from './layout.js'
import {throttled} from './throttle.js'
import {ImageReference, describe, parseReference} from './reference.js'
import {
  RegistryOptions,
  checkArchivePath,
  checkRegistryOptions,
  checkSigningKey,
  copyFromLayout,
  readySkopeo,
  skopeoContext,
} from './skopeo.js'
import {PACKING_FILE, WorkDir, makeWorkDir} from './workdir.js'

/** What `push` was asked to do. */
export interface PushOptions extends RegistryOptions {
  /** Push even when a wafer of the stack is the writable top of a mounted stack. */
  force?: boolean
  signal?: AbortSignal
  /** Called with a warning the user should see (a forced push of a mounted top). */
  warn?: (message: string) => void
}

/** One layer of a pushed image and the wafer it was packed from. */
export interface PushedLayer {
  digest: string
  diffId: string
  /** Whether this push packed it; false when the wafer was unchanged since it was last packed. */
  made: boolean
  mediaType: string
  size: number
  wafer: string
}

/** What `push` did, as `--json` prints it. */
export interface PushResult {
  /** The manifest digest the destination holds now. */
  digest: string
  /** Wafers with no files of their own: each added a history entry, not a layer. */
  emptyWafers: string[]
  /** The wafer whose image config was used (the nearest with one), or null for a default config. */
  imageFrom: null | string
  /** Layers bottom first. */
  layers: PushedLayer[]
  name: string
  /** The destination, as skopeo writes to it. */
  ref: string
}

/**
 * The steps that push wafer NAME's whole ancestry to REF as one OCI image, one layer per wafer with
 * files, bottom first, with the config of the nearest wafer that came from an image. Layers are
 * packed reproducibly and cached by the wafer's fingerprint, so an unchanged wafer is never packed
 * twice. `dispose` removes the temporary layout; call it however the steps end.
 */
export function pushSteps(
  locations: Locations,
  name: string,
  text: string,
  options: PushOptions,
): {dispose(): Promise<void>; result: PushResult; steps(): Step[]; trace: Step} {
  const store = new WaferStore(locations.wafers)
  const cache = new LayerCache(locations.wafers)
  const result: PushResult = {digest: '', emptyWafers: [], imageFrom: null, layers: [], name, ref: ''}
  let ref: ImageReference
  let wafers: string[] = []
  let work: WorkDir | undefined
  const histories = new Map<string, HistoryEntry[]>()

  const trace: Step = {
    async run() {
      checkName(name)
      checkRoot()
      checkRegistryOptions(options)
      ref = parseReference(text)
      checkArchivePath(ref, true)
      await checkSigningKey(options)
      result.ref = ref.skopeo
      if (!(await store.exists(name))) throw new WafersError(`wafer ${name} not found in ${store.root}.`)
      wafers = (await traceAncestry(store, name)).reverse()
      const writable = (await liveStacks(store)).filter(
        (stack) => stack.top !== undefined && wafers.includes(stack.top),
      )
      if (writable.length > 0) {
        const [first] = writable
        const message = `wafer ${first.top} is the writable top of the stack at ${first.mountpoint}, so its files may change while they are packed`
        if (!options.force) {
          throw new WafersError(`${message}.`, {
            suggestions: [`Unstack it first (wafers unstack ${first.top}), or push anyway with --force.`],
          })
        }

        options.warn?.(`${message}; pushing anyway (--force).`)
      }

      await cache.ensure()
      // The ancestry is traced again, and named in the work dir, under the store lock: a pull's
      // split (oci/dedupe.ts), made under it too, then either came first (and is traced here) or
      // sees this push and leaves these wafers alone until it ends.
      work = await makeWorkDir(store.root, 'push', {
        async underLock(dir) {
          wafers = (await traceAncestry(store, name)).reverse()
          writeFileAtomic(path.join(dir, PACKING_FILE), `${JSON.stringify(wafers)}\n`, 0o600)
        },
      })
      return `Traced ${[...wafers].reverse().join(' <- ')}`
    },
    title: `Trace wafer ${name}`,
  }

  const steps = (): Step[] => {
    const layout = path.join(work!.path, 'layout')
    const packs = wafers.map((wafer): Step => ({
      async run(report) {
        const packed = await packWafer(store, cache, wafer, work!.path, report, options.signal, readySkopeo)
        const meta = readMeta(store.dir(wafer), wafer)
        if (packed === undefined) {
          result.emptyWafers.push(wafer)
          histories.set(
            wafer,
            emptyHistory(wafer, meta.layer?.history ?? meta.build?.history, meta.image !== undefined),
          )
          return `${wafer} has no files of its own: a history entry, no layer`
        }

        result.layers.push(packed)
        histories.set(wafer, layerHistory(wafer, meta.layer?.history ?? meta.build?.history))
        const how = packed.made ? 'packed' : 'unchanged since last packed'
        return `${wafer}: ${how}, ${packed.digest.slice(7, 19)} (${humanSize(packed.size)})`
      },
      title: `Pack wafer ${wafer}`,
    }))
    const upload: Step = {
      async run(report) {
        const image = nearestImage(store, wafers)
        result.imageFrom = image?.wafer ?? null
        const platform = image?.meta ?? {...hostPlatform(), config: {}}
        const config: ImageConfigFile = {
          architecture: platform.architecture,
          config: platform.config ?? {},
          history:
            imageHistory(image, wafers, result.layers.length) ?? wafers.flatMap((wafer) => histories.get(wafer) ?? []),
          os: platform.os,
          rootfs: {diff_ids: result.layers.map((layer) => layer.diffId), type: 'layers'},
          ...(platform.variant ? {variant: platform.variant} : {}),
        }
        const configDescriptor = writeJsonBlob(layout, config, MEDIA.ociConfig)
        const manifest: Manifest = {
          config: configDescriptor,
          layers: result.layers.map((layer): Descriptor => ({
            digest: layer.digest,
            mediaType: layer.mediaType,
            size: layer.size,
          })),
          mediaType: MEDIA.ociManifest,
          schemaVersion: 2,
        }
        writeLayoutIndex(layout, writeJsonBlob(layout, manifest, MEDIA.ociManifest), 'image')
        report(`copying to ${describe(ref)}`)
        const context = await skopeoContext(options, ref, work!.path, options.signal)
        result.digest = await copyFromLayout(context, layout, ref, path.join(work!.path, 'digest'), manifest.layers)
        return `Pushed ${describe(ref)} (${result.digest})`
      },
      title: `Push ${shown(text)}`,
    }
    return [...packs, upload]
  }

  return {
    async dispose() {
      await work?.dispose()
    },
    result,
    steps,
    trace,
  }
}

/**
 * Packs wafer `wafer` into the layout in the work dir `work` (a hard link to the cached blob),
 * reusing the cached layer when the wafer's fingerprint is unchanged; undefined for a wafer with no
 * files. `meanwhile` runs while find takes the fingerprint, on a core of its own.
 */
async function packWafer(
  store: WaferStore,
  cache: LayerCache,
  wafer: string,
  work: string,
  report: (line: string) => void,
  signal?: AbortSignal,
  meanwhile?: () => Promise<void>,
): Promise<PushedLayer | undefined> {
  const {isEmptyLayer, layerFingerprint, packLayer} = await import('../layer/archive.js')
  const data = store.dataDir(wafer)
  const fingerprinting = layerFingerprint(data, signal)
  const settled = fingerprinting.then(
    () => {},
    () => {},
  )
  try {
    if ((await isEmptyLayer(data)) || (await onlyMachineId(data))) return undefined
    await meanwhile?.()
  } finally {
    await settled // find is never left walking after we are done with it
  }

  const before = await fingerprinting
  let entry = await cache.lookup(wafer, before)
  const made = entry === undefined
  if (entry === undefined) {
    const temporary = path.join(work, `pack-${wafer}`)
    const blanked = path.join(work, `blank-${wafer}`)
    try {
      const progress = throttled(report)
      const packed = await packLayer(data, temporary, {
        onBytes(n) {
          progress(`${humanSize(n)} packed`)
        },
        signal,
      })
      if ((await layerFingerprint(data, signal)) !== before) {
        throw new WafersError(`wafer ${wafer} changed while it was packed; push again once nothing writes to it.`)
      }

      entry = {...packed, fingerprint: before}
      if (await hasMachineId(data)) {
        entry = {...entry, ...(await blankMachineId(temporary, blanked))}
        await cache.store(wafer, entry, blanked)
      } else {
        await cache.store(wafer, entry, temporary)
      }
    } finally {
      await fs.rm(temporary, {force: true})
      await fs.rm(blanked, {force: true})
    }
  }

  const target = blobPath(path.join(work, 'layout'), entry.digest)
  await fs.mkdir(path.dirname(target), {recursive: true})
  await fs.link(cache.blob(entry.digest), target).catch((error) => {
    if (!isErrno(error, 'EEXIST')) throw error
  })
  // The cache is in $WAFERS, which anyone may write to: its blob may have been swapped since it was
  // checked. The link (never through a symlink) is in our private work dir, so checking it holds.
  const linked = await fs.lstat(target)
  if (!linked.isFile() || linked.size !== entry.size) {
    throw new WafersError(`the cached layer of wafer ${wafer} changed while it was used; push again.`)
  }

  return {diffId: entry.diffId, digest: entry.digest, made, mediaType: entry.mediaType, size: entry.size, wafer}
}

/** The history of a wafer that is a layer: what a pull recorded for it, or one entry naming the wafer. */
function layerHistory(wafer: string, recorded: HistoryEntry[] | undefined): HistoryEntry[] {
  if (recorded && recorded.filter((entry) => !entry.empty_layer).length === 1) return recorded
  return [{created_by: `wafers: wafer ${wafer}`}]
}

/**
 * The history of a wafer without files: none for the top a pull made (its image's history is
 * with its layers), what was recorded (as empty entries), or one empty entry naming the wafer.
 */
function emptyHistory(wafer: string, recorded: HistoryEntry[] | undefined, pulledTop: boolean): HistoryEntry[] {
  if (recorded) return recorded.map((entry) => ({...entry, empty_layer: true}))
  if (pulledTop) return []
  return [{created_by: `wafers: wafer ${wafer}`, empty_layer: true}]
}

/**
 * The history of the image the top wafer itself came from (pulled, or made by `wafers build`),
 * when it still fits the layers pushed: it holds what no wafer does, such as the empty entries of
 * ENV or CMD steps. Undefined otherwise (wafers were added on top, or the history is loose).
 */
function imageHistory(
  image: undefined | {meta: ImageMeta; wafer: string},
  wafers: string[],
  layers: number,
): HistoryEntry[] | undefined {
  const history = image?.meta.history
  if (!history || image.wafer !== wafers.at(-1)) return undefined
  return history.filter((entry) => !entry.empty_layer).length === layers ? history : undefined
}

/** The image meta of the nearest wafer (top first) that came from an image, if any. */
function nearestImage(store: WaferStore, wafers: string[]): undefined | {meta: ImageMeta; wafer: string} {
  for (const wafer of [...wafers].reverse()) {
    const meta = readMeta(store.dir(wafer), wafer)
    if (meta.image) return {meta: meta.image, wafer}
  }

  return undefined
}
