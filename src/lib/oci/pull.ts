import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {digestOf, sha256} from '../layer/digest.js'
import {HistoryEntry, type ImageMeta, type WaferMeta, readMeta} from '../store/meta.js'
import {checkName} from '../store/names.js'
import {humanSize, plural} from '../ui/render.js'
import type {Step} from '../steps.js'
import {Locations, WaferStore} from '../store/store.js'
import {checkRoot} from '../host/system.js'
import {chainIds, layerWaferName} from './chain.js'
import {
  Descriptor,
  ImageConfigFile,
  Manifest,
  checkConfig,
  checkManifest,
  historyPerLayer,
  isIndex,
  selectPlatform,
} from './image.js'
import {type Platform, checkPlatform, hostPlatform, platformText} from './platform.js'
import {blobPath, findLayoutImage, openBlob, parseJson, readJsonBlob} from './layout.js'
import {ImageReference, defaultName, describe, parseReference, pinned} from './reference.js'
import {
  RegistryOptions,
  SkopeoContext,
  checkRegistryOptions,
  copyToLayout,
  inspectConfig,
  inspectRaw,
  skopeoContext,
} from './skopeo.js'
import {WorkDir, makeWorkDir} from './workdir.js'
import {throttled} from './throttle.js'

/** What `pull` was asked to do. */
export interface PullOptions extends RegistryOptions {
  /** The wafer to make on top of the layers; default: the repository's last path component. */
  name?: string
  /** The platform to take from an index, and the only one taken; default: this machine's. */
  platform?: Platform
  signal?: AbortSignal
}

/** One layer of a pulled image and the wafer that holds it. */
export interface PulledLayer {
  /** The layer blob's digest, as the manifest names it. */
  digest: string
  /** Digest of the uncompressed layer (its rootfs.diff_ids entry). */
  diffId: string
  /** Whether this pull made the wafer; false when it was already here (shared with another image, or pulled before). */
  made: boolean
  /** The layer blob's size in bytes. */
  size: number
  wafer: string
}

/** What `pull` did, as `--json` prints it. */
export interface PullResult {
  architecture: string
  /** The manifest digest of the image (for the platform of this machine). */
  digest: string
  /** Layers bottom first. */
  layers: PulledLayer[]
  /** Whether NAME was made now; false when it already held this image. */
  made: boolean
  /** The empty wafer on top of the layers, ready for `wafers stack NAME`. */
  name: string
  os: string
  /** The reference, as skopeo reads it. */
  ref: string
}

/** Everything known about the image once its manifest and config are read. */
interface Plan {
  /** Where layer blobs are read from: the source layout, or the work dir's after the download. */
  blobs: string
  chain: string[]
  config: ImageConfigFile
  /** skopeo's source for the download, or undefined when the blobs are already in a layout. */
  copyFrom?: string
  digest: string
  history?: HistoryEntry[][]
  manifest: Manifest
  present: boolean[]
  ref: ImageReference
}

/**
 * The steps that pull REF: first `resolve` (read the manifest and config, decide which layers are
 * new), then, once it has run, `steps()` (download what is new, unpack each new layer into its
 * wafer, bottom first, make NAME on top). `dispose` removes the temporary files; call it however
 * the steps end. No wafer appears half made: each is built under a hidden name and renamed.
 */
export function pullSteps(
  locations: Locations,
  text: string,
  options: PullOptions,
): {dispose(): Promise<void>; resolve: Step; result: PullResult; steps(): Step[]} {
  const store = new WaferStore(locations.wafers)
  const platform = options.platform ?? hostPlatform()
  const result: PullResult = {...platform, digest: '', layers: [], made: false, name: '', os: platform.os, ref: ''}
  let work: WorkDir | undefined
  let context: SkopeoContext | undefined
  let plan: Plan | undefined
  const layout = () => path.join(work!.path, 'layout')

  const resolve: Step = {
    async run(report) {
      checkRoot()
      checkRegistryOptions(options)
      const ref = parseReference(text)
      const name = checkName(options.name ?? defaultName(ref))
      result.name = name
      result.ref = ref.skopeo
      // Held until the pull ends, from before it looks for layer wafers to reuse: prune leaves
      // image layer wafers alone while one is held (see workDirsHeld).
      work = await makeWorkDir(store.root, 'pull')
      if (ref.transport === 'oci') {
        const image = findLayoutImage(ref.path!, ref.tag, platform)
        const config = readJsonBlob(ref.path!, image.manifest.config, `the config of ${describe(ref)}`).value
        plan = makePlan(ref, image.manifest, image.digest, config, ref.path!, platform)
      } else {
        context = await skopeoContext(options, ref, work.path, options.signal)
        report(`reading ${describe(ref)}`)
        plan = await inspect(context, ref, platform)
      }

      result.digest = plan.digest
      const names = plan.chain.map((chainId) => layerWaferName(chainId))
      for (const [i, chainId] of plan.chain.entries()) {
        // eslint-disable-next-line no-await-in-loop
        plan.present[i] = await layerPresent(store, names[i], chainId, i === 0 ? undefined : names[i - 1])
        const descriptor = plan.manifest.layers[i]
        result.layers.push({
          diffId: plan.config.rootfs.diff_ids[i],
          digest: descriptor.digest,
          made: false,
          size: descriptor.size,
          wafer: names[i],
        })
      }

      const upToDate = await checkTarget(store, name, plan.digest, names.at(-1), describe(ref))
      result.made = !upToDate
      const fresh = plan.present.filter((present) => !present).length
      if (upToDate) return `${name} is up to date with ${describe(ref)}`
      return `Read ${describe(ref)}: ${platformText(plan.config)}, ${plural(plan.chain.length, 'layer')}, ${fresh} new`
    },
    title: `Read image ${text}`,
  }

  const steps = (): Step[] => {
    if (!plan || !result.made) return []
    const current = plan
    const missing = current.manifest.layers.filter((_, i) => !current.present[i])
    const fetch: Step = {
      async run(report) {
        await download(context!, current, layout(), report)
        current.blobs = layout()
        return `Downloaded ${plural(missing.length, 'layer')} (${humanSize(missing.reduce((sum, layer) => sum + layer.size, 0))})`
      },
      skip: () => (current.copyFrom === undefined || missing.length === 0 ? 'nothing to download' : undefined),
      title: `Download ${plural(missing.length, 'new layer')} of ${describe(current.ref)}`,
    }
    const layers = current.manifest.layers.map((descriptor, i): Step => {
      const layer = result.layers[i]
      return {
        async run(report) {
          layer.made = await unpackInto(store, current, i, result.layers, report, options.signal)
          return layer.made
            ? `Unpacked layer ${i + 1} into ${layer.wafer}`
            : `Layer ${i + 1} is already here as ${layer.wafer}`
        },
        skip: () => (current.present[i] ? `layer ${i + 1} is already here as ${layer.wafer}` : undefined),
        title: `Unpack layer ${i + 1}/${current.manifest.layers.length} ${descriptor.digest.slice(7, 19)} (${humanSize(descriptor.size)}) into ${layer.wafer}`,
      }
    })
    const top: Step = {
      async run() {
        const image: ImageMeta = {
          architecture: current.config.architecture,
          config: current.config.config ?? {},
          digest: current.digest,
          history: current.config.history,
          os: current.config.os,
          ref: current.ref.skopeo,
          ...(current.config.variant ? {variant: current.config.variant} : {}),
        }
        await store.create(result.name, result.layers.at(-1)?.wafer, {meta: {image}})
        return `Made ${result.name} on ${result.layers.at(-1)?.wafer ?? 'nothing (the image has no layers)'}`
      },
      title: `Make wafer ${result.name}`,
    }
    return [fetch, ...layers, top]
  }

  return {
    async dispose() {
      await work?.dispose()
    },
    resolve,
    result,
    steps,
  }
}

function makePlan(
  ref: ImageReference,
  manifest: Manifest,
  digest: string,
  rawConfig: unknown,
  blobs: string,
  platform: Platform,
  copyFrom?: string,
): Plan {
  const what = `the config of ${describe(ref)}`
  const config = checkConfig(rawConfig, manifest.layers.length, what)
  checkPlatform(config, platform, describe(ref))
  const diffIds = config.rootfs.diff_ids
  return {
    blobs,
    chain: chainIds(diffIds),
    config,
    copyFrom,
    digest,
    history: historyPerLayer(config.history, diffIds.length),
    manifest,
    present: diffIds.map(() => false),
    ref,
  }
}

/**
 * Reads the manifest (through an index, to this machine's platform) and config of a registry
 * image or archive with skopeo, without downloading layers. A registry image is then copied by
 * digest, so a tag moved meanwhile changes nothing.
 */
async function inspect(context: SkopeoContext, ref: ImageReference, platform: Platform): Promise<Plan> {
  // The config is asked for at once, beside the manifest (skopeo picks this machine's platform
  // from an index too); it is used only if it is the one the manifest names.
  const [first, guess] = await Promise.all([
    inspectRaw(context, ref),
    inspectConfig(context, ref).catch(() => undefined),
  ])
  let raw = first
  let value = parseJson(raw, `the manifest of ${describe(ref)}`)
  let digest = digestOf(sha256().update(raw))
  if (isIndex(value)) {
    const chosen: Descriptor = selectPlatform(value, platform, `the image index of ${describe(ref)}`)
    if (ref.transport !== 'docker') {
      throw new WafersError(
        `${describe(ref)} holds an image index; wafers pulls an index from registries and oci: layouts only.`,
      )
    }

    raw = await inspectRaw(context, ref, pinned(ref, chosen.digest))
    digest = digestOf(sha256().update(raw))
    if (digest !== chosen.digest)
      throw new WafersError(`the manifest of ${describe(ref)} does not match its digest ${chosen.digest}.`)
    value = parseJson(raw, `the manifest of ${describe(ref)}`)
  } else if (ref.digest !== undefined && ref.digest !== digest) {
    throw new WafersError(`the manifest of ${describe(ref)} does not match its digest.`)
  }

  const manifest = checkManifest(value, `the manifest of ${describe(ref)}`)
  const source = pinned(ref, digest)
  const configRaw =
    guess !== undefined && digestOf(sha256().update(guess)) === manifest.config.digest
      ? guess
      : await inspectConfig(context, ref, source)
  if (digestOf(sha256().update(configRaw)) !== manifest.config.digest) {
    throw new WafersError(`the config of ${describe(ref)} does not match its digest ${manifest.config.digest}.`)
  }

  return makePlan(ref, manifest, digest, parseJson(configRaw, `the config of ${describe(ref)}`), '', platform, source)
}

/**
 * Downloads the layers not yet here into the OCI layout `layout`. Layers already unpacked get a
 * placeholder of their size first: skopeo's OCI layout destination takes a blob whose file exists
 * as already there (it only stats it), so it downloads only the missing ones.
 */
async function download(
  context: SkopeoContext,
  plan: Plan,
  layout: string,
  report: (line: string) => void,
): Promise<void> {
  const blobs = path.join(layout, 'blobs', 'sha256')
  await fs.mkdir(blobs, {recursive: true})
  const placeholders = new Set<string>()
  for (const [i, descriptor] of plan.manifest.layers.entries()) {
    if (!plan.present[i]) continue
    const file = blobPath(layout, descriptor.digest)
    // eslint-disable-next-line no-await-in-loop
    await fs.writeFile(file, '')
    // eslint-disable-next-line no-await-in-loop
    await fs.truncate(file, descriptor.size)
    placeholders.add(path.basename(file))
  }

  const total = plan.manifest.layers.filter((_, i) => !plan.present[i]).reduce((sum, layer) => sum + layer.size, 0)
  const timer = setInterval(async () => {
    let bytes = 0
    for (const dir of [layout, blobs]) {
      // eslint-disable-next-line no-await-in-loop
      for (const entry of await fs.readdir(dir, {withFileTypes: true}).catch(() => [])) {
        if (!entry.isFile() || placeholders.has(entry.name)) continue
        // eslint-disable-next-line no-await-in-loop
        bytes += (await fs.stat(path.join(dir, entry.name)).catch(() => ({size: 0}))).size
      }
    }

    report(`${humanSize(Math.min(bytes, total))} of ${humanSize(total)}`)
  }, 500)
  try {
    await copyToLayout(context, plan.ref, plan.copyFrom!, layout)
  } finally {
    clearInterval(timer)
  }

  // skopeo may have converted a Docker manifest to OCI: the layers must be the same blobs.
  const copied = findLayoutImage(layout, 'image', {
    architecture: plan.config.architecture,
    os: plan.config.os,
    variant: plan.config.variant,
  }).manifest
  const same =
    copied.layers.length === plan.manifest.layers.length &&
    copied.layers.every((layer, i) => layer.digest === plan.manifest.layers[i].digest)
  if (!same) throw new WafersError(`${describe(plan.ref)} changed while it was downloaded; pull it again.`)
  plan.manifest = copied
}

/**
 * Unpacks layer `i` of `plan` into a new wafer on the wafer of the layer below, checking the
 * blob's digest and the layer's diffID while streaming. Returns false when another pull made the
 * same layer wafer meanwhile.
 */
async function unpackInto(
  store: WaferStore,
  plan: Plan,
  i: number,
  layers: PulledLayer[],
  report: (line: string) => void,
  signal?: AbortSignal,
): Promise<boolean> {
  const {compressionOf, unpackLayer} = await import('../layer/archive.js')
  const descriptor = plan.manifest.layers[i]
  const layer = layers[i]
  const parent = i === 0 ? undefined : layers[i - 1].wafer
  const meta: WaferMeta = {
    layer: {chainId: plan.chain[i], diffId: layer.diffId, ...(plan.history ? {history: plan.history[i]} : {})},
  }
  const what = `layer ${i + 1} (${descriptor.digest}) of ${describe(plan.ref)}`
  const progress = throttled(report)
  try {
    await store.create(layer.wafer, parent, {
      async fill(data) {
        const input = openBlob(plan.blobs, descriptor, what)
        await unpackLayer(input, data, {
          compression: compressionOf(descriptor.mediaType),
          expectDiffId: layer.diffId,
          expectDigest: descriptor.digest,
          name: what,
          onBytes(n) {
            progress(`${humanSize(n)} of ${humanSize(descriptor.size)}`)
          },
          signal,
        })
      },
      meta,
    })
    return true
  } catch (error) {
    if (signal?.aborted) throw new WafersError(`interrupted while unpacking ${what}.`, {exit: 130})
    if (await layerPresent(store, layer.wafer, plan.chain[i], parent).catch(() => false)) return false
    throw error
  }
}

/**
 * Whether wafer `name` already holds the layer with ChainID `chainId` on `parent`. Refuses a wafer
 * of that name that holds something else: it is never overwritten.
 */
async function layerPresent(
  store: WaferStore,
  name: string,
  chainId: string,
  parent: string | undefined,
): Promise<boolean> {
  if (!(await store.exists(name))) return false
  const meta = readMeta(store.dir(name), name)
  const hisParent = await store.readParent(name)
  if (meta.layer?.chainId !== chainId || hisParent !== parent || !(await store.hasData(name))) {
    throw new WafersError(`wafer ${name} exists but does not hold the layer ${chainId}; remove it or rename it.`)
  }

  return true
}

/**
 * Whether NAME already holds this image (true: nothing to do). Refuses a NAME that exists and
 * holds something else: pulling never replaces a wafer someone may have built on.
 */
async function checkTarget(
  store: WaferStore,
  name: string,
  digest: string,
  top: string | undefined,
  image: string,
): Promise<boolean> {
  if (!(await store.exists(name))) return false
  const meta = readMeta(store.dir(name), name)
  if (meta.image?.digest === digest && (await store.readParent(name)) === top) return true
  const what = meta.image
    ? `the image ${meta.image.ref ?? 'pulled earlier'} (${meta.image.digest ?? 'no digest'})`
    : 'a wafer not pulled from an image'
  throw new WafersError(`wafer ${name} already exists and holds ${what}, not ${image}.`, {
    suggestions: [`Pull into another name (wafers pull ${image} NAME), or remove it first (wafers rm ${name}).`],
  })
}
