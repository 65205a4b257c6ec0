import {promises as fs, lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError, shown} from '../errors.js'
import {digestOf, sha256} from '../layer/digest.js'
import {HistoryEntry, type ImageMeta, type WaferMeta, readMeta} from '../store/meta.js'
import {checkName} from '../store/names.js'
import {humanSize, plural} from '../ui/render.js'
import type {Step} from '../steps.js'
import {Locations, WaferStore} from '../store/store.js'
import {checkRoot} from '../host/system.js'
import {MAX_LOWER_LAYERS, findMachineId} from '../store/ancestry.js'
import {readStoreFile} from '../host/files.js'
import {chainIds, layerPresent, layerWaferName} from './chain.js'
import {findImportedLayer} from './importctl.js'
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
import {MAX_JSON_BLOB, blobCompression, blobPath, findLayoutImage, openBlob, parseJson, readJsonBlob} from './layout.js'
import {ImageReference, defaultName, describe, parseReference, pinned} from './reference.js'
import {
  RegistryOptions,
  SkopeoContext,
  checkArchivePath,
  checkRegistryOptions,
  copyToLayout,
  inspectConfig,
  inspectRaw,
  skopeoContext,
} from './skopeo.js'
import {WorkDir, makeWorkDir} from './workdir.js'
import {throttled} from './throttle.js'
import type {GrowingBlob} from './stream.js'

/** What `pull` was asked to do. */
export interface PullOptions extends RegistryOptions {
  /**
   * Take a layer from a named wafer here that still holds it (a base pushed and pulled back),
   * splitting that wafer, instead of unpacking a second copy (oci/dedupe.ts); default: true.
   */
  dedupe?: boolean
  /** The wafer to make on top of the layers; default: the repository's last path component. */
  name?: string
  /** Re-point NAME at this image even when it holds another image, has files of its own or children. */
  replace?: boolean
  /** The platform to take from an index, and the only one taken; default: this machine's. */
  platform?: Platform
  signal?: AbortSignal
  /** Called with a warning the user should see (a re-pointed top with children, a split journal left alone). */
  warn?: (message: string) => void
}

/** One layer of a pulled image and the wafer that holds it. */
export interface PulledLayer {
  /** The layer blob's digest, as the manifest names it. */
  digest: string
  /** Digest of the uncompressed layer (its rootfs.diff_ids entry). */
  diffId: string
  /** importctl's directory of this layer (`$STACKS/.oci-sha256:HEX`) when the wafer was made of it by hard links, not downloaded. */
  importctl?: string
  /** Whether this pull made the wafer; false when it was already here (shared with another image, or pulled before). */
  made: boolean
  /** Why the named wafer that held this layer (`sharedFrom`'s candidate) was not split: it was unpacked instead. */
  notShared?: string
  /** The named wafer whose files became this layer wafer (dedupe): it now sits on it. */
  sharedFrom?: string
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
  /** When NAME held another image and now sits on this one: the manifest digest it held. */
  replaced?: string
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
  /**
   * Layers not downloaded with the others: a wafer here was pushed as each (the push cache says
   * so), and dedupe may take it from there. One dedupe does not take is downloaded on its own.
   */
  deferred: boolean[]
  /** For each layer not yet a wafer, importctl's directory of it, when importctl pulled it: taken, not downloaded. */
  imported: Array<string | undefined>
  manifest: Manifest
  /** The size of the manifest as read, for bounding what skopeo writes. */
  manifestSize?: number
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
  let target: Target = {state: 'absent'}
  const layout = () => path.join(work!.path, 'layout')

  // What this pull makes of $WAFERS and its parents, to remove again if it is refused.
  let created: string[] = []
  let finished = false

  const resolve: Step = {
    async run(report) {
      created = missingDirs(store.root)
      checkRoot()
      checkRegistryOptions(options)
      const ref = parseReference(text)
      const name = checkName(options.name ?? defaultName(ref))
      result.name = name
      result.ref = ref.skopeo
      // Held until the pull ends, from before it looks for layer wafers to reuse: prune leaves
      // image layer wafers alone while one is held (see workDirsHeld).
      work = await makeWorkDir(store.root, 'pull')
      // A split a killed pull left midway is finished (or undone) before anything is looked at.
      const [{withLock}, {finishSplits}] = await Promise.all([import('../store/lock.js'), import('../store/split.js')])
      for (const note of await withLock(store.root, () => finishSplits(store))) options.warn?.(note)
      if (ref.transport === 'oci') {
        const image = findLayoutImage(ref.path!, ref.tag, platform)
        const config = readJsonBlob(ref.path!, image.manifest.config, `the config of ${describe(ref)}`).value
        plan = makePlan(ref, image.manifest, image.digest, config, ref.path!, platform)
        // A layout is read directly, never through skopeo: a policy that may refuse it is asked
        // through a copy of its manifest and config alone (every layer a placeholder).
        if (policyMayRefuse(options.trust?.policy, 'oci')) {
          context = await skopeoContext(options, ref, work.path, options.signal)
          report(`checking ${describe(ref)} against the trust policy`)
          await download(
            context,
            {...plan, copyFrom: ref.skopeo, present: plan.present.map(() => true)},
            layout(),
            () => {},
          )
        }
      } else {
        checkArchivePath(ref)
        context = await skopeoContext(options, ref, work.path, options.signal)
        report(`reading ${describe(ref)}`)
        plan = await inspect(context, ref, platform)
      }

      result.digest = plan.digest
      const names = plan.chain.map((chainId) => layerWaferName(chainId))
      const {mayShareLayer} = await import('./dedupe.js')
      for (const [i, chainId] of plan.chain.entries()) {
        plan.present[i] = await layerPresent(store, names[i], chainId, i === 0 ? undefined : names[i - 1])
        const descriptor = plan.manifest.layers[i]
        // A layer importctl pull-oci already unpacked travels no second time (see importctl.ts).
        if (!plan.present[i]) plan.imported[i] = findImportedLayer(locations.stacks, descriptor.digest)
        // Nor, until dedupe has tried, one that a wafer here may hold (only downloads can wait).
        if (!plan.present[i] && !plan.imported[i] && plan.copyFrom !== undefined && options.dedupe !== false) {
          const parent = i === 0 ? undefined : names[i - 1]
          plan.deferred[i] = await mayShareLayer(store, {diffId: plan.config.rootfs.diff_ids[i], parent})
        }

        result.layers.push({
          diffId: plan.config.rootfs.diff_ids[i],
          digest: descriptor.digest,
          made: false,
          size: descriptor.size,
          wafer: names[i],
        })
      }

      target = await checkTarget(store, ref, name, plan.digest, names.at(-1), options)
      const upToDate = target.state === 'current'
      result.made = !upToDate
      if (target.state === 'repoint') result.replaced = target.held.digest ?? ''
      const fresh = plan.present.filter((present, i) => !present && !plan!.imported[i]).length
      const imported = plan.imported.filter(Boolean).length
      if (upToDate) return `${name} is up to date with ${describe(ref)}`
      return `Read ${describe(ref)}: ${platformText(plan.config)}, ${plural(plan.chain.length, 'layer')}, ${fresh} new${imported > 0 ? `, ${imported} from importctl` : ''}`
    },
    title: `Read image ${shown(text)}`,
  }

  const steps = (): Step[] => {
    if (!plan || !result.made) return []
    const current = plan
    const unpackedWhileDownloading = new Set<number>()
    /**
     * Downloads the one new layer `i` of the image while unpacking it as it comes (see stream.ts).
     * Whether it was unpacked so: when not (the file was not there to read, or what was read
     * failed the digest checks), its own step unpacks the downloaded blob.
     */
    const downloadUnpacking = async (i: number, report: (line: string) => void): Promise<boolean> => {
      const [{growingBlob}, {compressionOf}] = await Promise.all([import('./stream.js'), import('../layer/archive.js')])
      const descriptor = current.manifest.layers[i]
      // Stopped by Ctrl-C as any step is, and when the download fails.
      const stop = new AbortController()
      const signal = options.signal ? AbortSignal.any([stop.signal, options.signal]) : stop.signal
      let downloaded = false
      const unpacking = unpackInto(
        store,
        current,
        i,
        result.layers,
        (line) => {
          if (downloaded) report(`unpacked ${line}`)
        },
        signal,
        async () =>
          growingBlob(layout(), descriptor, {
            finished: () => downloaded,
            said: compressionOf(descriptor.mediaType),
            signal,
          }),
      ).then(
        (made) => ({made}),
        (error: unknown) => ({error}),
      )
      try {
        await download(context!, current, layout(), report)
      } catch (error) {
        stop.abort()
        // A layer unpacked whole before the download failed (at the config) stays, and is said.
        const outcome = await unpacking
        if ('made' in outcome) result.layers[i].made = outcome.made
        throw error
      } finally {
        downloaded = true
      }

      const outcome = await unpacking
      if ('error' in outcome) {
        if (options.signal?.aborted) throw outcome.error
        return false
      }

      result.layers[i].made = outcome.made
      return true
    }

    const missing = current.manifest.layers.filter(
      (_, i) => !current.present[i] && !current.imported[i] && !current.deferred[i],
    )
    const fetch: Step = {
      async run(report) {
        const streamed = streamableLayer(current)
        if (streamed === undefined) await download(context!, current, layout(), report)
        else if (await downloadUnpacking(streamed, report)) unpackedWhileDownloading.add(streamed)
        current.blobs = layout()
        const waiting = current.deferred.filter(Boolean).length
        if (missing.length === 0 && waiting > 0)
          return `Checked ${describe(current.ref)}: ${plural(waiting, 'layer')} may be taken from wafers here`
        if (missing.length === 0) return `Checked ${describe(current.ref)}: every layer is already here`
        const size = humanSize(missing.reduce((sum, layer) => sum + layer.size, 0))
        const verb = unpackedWhileDownloading.size > 0 ? 'Downloaded and unpacked' : 'Downloaded'
        return `${verb} ${plural(missing.length, 'layer')} (${size})`
      },
      // Run even with nothing to download: the copy is where skopeo checks the trust policy.
      skip: () => (current.copyFrom === undefined ? 'nothing to download' : undefined),
      title:
        missing.length === 0
          ? `Check ${describe(current.ref)} against the trust policy`
          : `Download ${plural(missing.length, 'new layer')} of ${describe(current.ref)}`,
    }
    const layers = current.manifest.layers.map((descriptor, i): Step => {
      const layer = result.layers[i]
      const fromImportctl = current.imported[i]
      if (fromImportctl !== undefined)
        return importedLayerStep(store, current, i, result.layers, fromImportctl, {
          context,
          layout,
          signal: options.signal,
        })
      return {
        async run(report) {
          if (unpackedWhileDownloading.has(i)) {
            return layer.made
              ? `Unpacked layer ${i + 1} into ${layer.wafer} as it downloaded`
              : `Layer ${i + 1} is already here as ${layer.wafer}`
          }

          if (options.dedupe !== false) {
            const {shareLayer} = await import('./dedupe.js')
            const wanted = {
              diffId: layer.diffId,
              meta: layerMeta(current, i, layer.diffId),
              name: layer.wafer,
              parent: i === 0 ? undefined : result.layers[i - 1].wafer,
            }
            const shared = await shareLayer(locations.stacks, store, wanted, {report, signal: options.signal})
            if (shared && 'split' in shared) {
              layer.made = true
              layer.sharedFrom = shared.wafer
              return `Layer ${i + 1} is what ${shared.wafer} holds: its files are now ${layer.wafer}, which ${shared.wafer} sits on`
            }

            if (shared) layer.notShared = shared.skipped
          }

          // Left for dedupe, which did not take it: downloaded now, alone.
          if (current.deferred[i]) {
            report(`downloading layer ${i + 1}`)
            await downloadAlone(context!, current, i, layout(), report)
          }

          layer.made = await unpackInto(store, current, i, result.layers, report, options.signal)
          const not = layer.notShared === undefined ? '' : ` (not taken from ${layer.notShared})`
          return layer.made
            ? `Unpacked layer ${i + 1} into ${layer.wafer}${not}`
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
        const parent = result.layers.at(-1)?.wafer
        if (target.state === 'repoint') {
          const was = target.held
          await repoint(store, result.name, parent, {...readMeta(store.dir(result.name), result.name), image}, options)
          finished = true
          return `Re-pointed ${result.name} from ${was.digest ?? 'an image'} to ${image.digest} on ${parent ?? 'nothing'}`
        }

        // Like `stack NAME PARENT`: the new top gets its own machine id, so that two containers of
        // one image never share the one of the machine that pushed it.
        const below = result.layers.map((layer) => store.dataDir(layer.wafer)).reverse()
        await store.create(result.name, parent, {
          machineId: await findMachineId(below),
          meta: {image},
          parentData: below[0],
        })
        finished = true
        return `Made ${result.name} on ${result.layers.at(-1)?.wafer ?? 'nothing (the image has no layers)'}`
      },
      title: target.state === 'repoint' ? `Re-point wafer ${result.name}` : `Make wafer ${result.name}`,
    }
    return [fetch, ...layers, top]
  }

  return {
    async dispose() {
      await work?.dispose()
      // rmdir: only what is still empty (layers kept for the next pull keep $WAFERS), never a link.
      if (!finished) {
        for (const dir of created) {
          if (
            !(await fs.rmdir(dir).then(
              () => true,
              () => false,
            ))
          )
            break
        }
      }
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
  checkDepth(manifest, describe(ref))
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
    deferred: diffIds.map(() => false),
    history: historyPerLayer(config.history, diffIds.length),
    imported: diffIds.map(() => undefined),
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
  // Stopped when the manifest cannot be read: a build goes on, and must not leave it running.
  const guessing = new AbortController()
  const signals = [guessing.signal, ...(context.signal ? [context.signal] : [])]
  const guessed = inspectConfig({...context, signal: AbortSignal.any(signals)}, ref).catch(() => undefined)
  let raw: Buffer
  try {
    raw = await inspectRaw(context, ref)
  } catch (error) {
    guessing.abort()
    await guessed
    throw error
  }

  const guess = await guessed
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
    checkDigestOf(`the manifest of ${describe(ref)}`, chosen.digest, digest)
    value = parseJson(raw, `the manifest of ${describe(ref)}`)
  } else if (ref.digest !== undefined) {
    checkDigestOf(`the manifest of ${describe(ref)}`, ref.digest, digest)
  }

  const manifest = checkManifest(value, `the manifest of ${describe(ref)}`)
  checkDepth(manifest, describe(ref))
  const source = pinned(ref, digest)
  const configRaw =
    guess !== undefined && digestOf(sha256().update(guess)) === manifest.config.digest
      ? guess
      : await inspectConfig(context, ref, source)
  checkDigestOf(`the config of ${describe(ref)}`, manifest.config.digest, digestOf(sha256().update(configRaw)))
  const plan = makePlan(
    ref,
    manifest,
    digest,
    parseJson(configRaw, `the config of ${describe(ref)}`),
    '',
    platform,
    source,
  )
  plan.manifestSize = raw.length
  return plan
}

/** `dir` and those of its parents that do not exist yet, deepest first. */
function missingDirs(dir: string): string[] {
  const missing: string[] = []
  for (let at = path.resolve(dir); at !== path.dirname(at); at = path.dirname(at)) {
    if (lstatSync(at, {throwIfNoEntry: false}) !== undefined) break
    missing.push(at)
  }

  return missing
}

/** Refuses `got` when it is not the digest `want` that `what` was asked for by, naming both. */
function checkDigestOf(what: string, want: string, got: string): void {
  if (got !== want) throw new WafersError(`${what} does not match its digest: asked for ${want}, got ${got}.`)
}

/** Refuses, before anything is unpacked, an image with more layers than a stack of wafers can hold. */
function checkDepth(manifest: Manifest, image: string): void {
  if (manifest.layers.length > MAX_LOWER_LAYERS) {
    throw new WafersError(
      `${image} has ${manifest.layers.length} layers, more than the ${MAX_LOWER_LAYERS} a stack can hold (overlayfs mounts at most ${MAX_LOWER_LAYERS} lower layers).`,
    )
  }
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
  const here = (i: number) => plan.present[i] || plan.imported[i] !== undefined || plan.deferred[i]
  // A blob the image has twice, here once and to download once, is downloaded: no placeholder.
  const wanted = new Set(plan.manifest.layers.filter((_, i) => !here(i)).map((layer) => layer.digest))
  for (const [i, descriptor] of plan.manifest.layers.entries()) {
    if (!here(i) || wanted.has(descriptor.digest)) continue
    const file = blobPath(layout, descriptor.digest)
    placeholders.add(path.basename(file))
    // A blob downloaded before (a layer importctl's copy of which could not be taken comes alone, later) stays.
    if (lstatSync(file, {throwIfNoEntry: false}) !== undefined) continue
    await fs.writeFile(file, '')
    await fs.truncate(file, descriptor.size)
  }

  const total = plan.manifest.layers.filter((_, i) => !here(i)).reduce((sum, layer) => sum + layer.size, 0)
  const timer = setInterval(async () => {
    let bytes = 0
    for (const dir of [layout, blobs]) {
      for (const entry of await fs.readdir(dir, {withFileTypes: true}).catch(() => [])) {
        if (!entry.isFile() || placeholders.has(entry.name)) continue
        bytes += (await fs.stat(path.join(dir, entry.name)).catch(() => ({size: 0}))).size
      }
    }

    report(`${humanSize(Math.min(bytes, total))} of ${humanSize(total)}`)
  }, 500)
  try {
    const missing = plan.manifest.layers.filter((_, i) => !here(i))
    // Besides layers, skopeo writes the config and a manifest it may have converted (a little longer).
    const others = Math.max(plan.manifest.config.size, 2 * (plan.manifestSize ?? MAX_JSON_BLOB) + 4096)
    await copyToLayout(context, plan.ref, plan.copyFrom!, layout, plan.manifest.layers, missing, others)
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
  if (!same) {
    const at = copied.layers.findIndex((layer, i) => layer.digest !== plan.manifest.layers[i]?.digest)
    throw new WafersError(
      at === -1 || at >= plan.manifest.layers.length
        ? `${describe(plan.ref)} changed while it was downloaded: ${copied.layers.length} layers came, not ${plan.manifest.layers.length}; pull it again.`
        : `${describe(plan.ref)} changed while it was downloaded: layer ${at + 1} is ${copied.layers[at].digest}, not ${plan.manifest.layers[at].digest}; pull it again.`,
    )
  }

  plan.manifest = copied
}

/** Downloads layer `i` of `plan` alone, into `layout` (its placeholder, if any, goes first). */
async function downloadAlone(
  context: SkopeoContext,
  plan: Plan,
  i: number,
  layout: string,
  report: (line: string) => void,
): Promise<void> {
  await fs.rm(blobPath(layout, plan.manifest.layers[i].digest), {force: true})
  const alone: Plan = {
    ...plan,
    deferred: plan.deferred.map(() => false),
    imported: plan.imported.map(() => undefined),
    present: plan.present.map((_, k) => k !== i),
  }
  await download(context, alone, layout, report)
  plan.blobs = layout
}

/**
 * The step that makes layer `i`'s wafer of importctl's directory `dir` by hard links. When that
 * cannot be (another file system, an overlay attribute wafers would escape: LayerNotTaken), the
 * layer is downloaded after all, alone, and unpacked as any other.
 */
function importedLayerStep(
  store: WaferStore,
  plan: Plan,
  i: number,
  layers: PulledLayer[],
  dir: string,
  {context, layout, signal}: {context: SkopeoContext | undefined; layout: () => string; signal?: AbortSignal},
): Step {
  const layer = layers[i]
  const descriptor = plan.manifest.layers[i]
  return {
    async run(report) {
      const {LayerNotTaken} = await import('../layer/imported.js')
      const {takeLayer} = await import('./importctl.js')
      const parent = i === 0 ? undefined : layers[i - 1].wafer
      const lowers = layers
        .slice(0, i)
        .reverse()
        .map((below) => store.dataDir(below.wafer))
      const meta: WaferMeta = {imported: {by: 'importctl', from: dir}, ...layerMeta(plan, i, layer.diffId)}
      try {
        layer.made = await takeLayer(store, {
          dir,
          lowers,
          meta,
          parent,
          wafer: layer.wafer,
          what: `layer ${i + 1} (${dir})`,
        })
        layer.importctl = dir
        return layer.made
          ? `Took layer ${i + 1} from importctl's ${path.basename(dir)} as ${layer.wafer}, nothing downloaded`
          : `Layer ${i + 1} is already here as ${layer.wafer}`
      } catch (error) {
        // Whatever keeps importctl's copy from being taken (LayerNotTaken, or a link the kernel
        // refuses: EPERM, EMLINK, a file gone meanwhile), the layer is downloaded instead; only a
        // stop stops the pull.
        if (signal?.aborted) throw error
        const why = error instanceof LayerNotTaken ? error.reason : (error as Error).message.replace(/\.$/, '')
        report(`importctl's copy of layer ${i + 1} cannot be taken (${why}); downloading it`)
        if (context !== undefined && plan.copyFrom !== undefined)
          await downloadAlone(context, plan, i, layout(), report)

        layer.made = await unpackInto(store, plan, i, layers, report, signal)
        return `Unpacked layer ${i + 1} into ${layer.wafer} (importctl's copy could not be taken)`
      }
    },
    title: `Take layer ${i + 1}/${plan.manifest.layers.length} ${descriptor.digest.slice(7, 19)} from importctl's copy as ${layer.wafer}`,
  }
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
  source?: () => Promise<GrowingBlob | undefined>,
): Promise<boolean> {
  const {compressionOf, unpackLayer} = await import('../layer/archive.js')
  const descriptor = plan.manifest.layers[i]
  const layer = layers[i]
  const parent = i === 0 ? undefined : layers[i - 1].wafer
  const meta = layerMeta(plan, i, layer.diffId)
  const what = `layer ${i + 1} (${descriptor.digest}) of ${describe(plan.ref)}`
  const progress = throttled(report)
  try {
    await store.create(layer.wafer, parent, {
      async fill(data) {
        // Read as it downloads (see stream.ts), or the downloaded blob.
        const growing = await source?.()
        if (source && growing === undefined) throw new NotStreamed()
        const input = growing?.input ?? openBlob(plan.blobs, descriptor, what)
        try {
          await unpackLayer(input, data, {
            compression:
              growing?.compression ??
              blobCompression(plan.blobs, descriptor, compressionOf(descriptor.mediaType), what),
            expectDiffId: layer.diffId,
            expectDigest: descriptor.digest,
            // The layers below, nearest first: parents this layer does not list keep their values.
            lowers: layers
              .slice(0, i)
              .reverse()
              .map((below) => store.dataDir(below.wafer)),
            name: what,
            onBytes(n) {
              progress(`${humanSize(n)} of ${humanSize(descriptor.size)}`)
            },
            signal,
          })
        } finally {
          // Its file closed, however the unpack ended (one that throws before reading leaves it open).
          growing?.input.destroy()
        }
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
 * The layer of `plan` that a pull may unpack while skopeo downloads it (see stream.ts): the only
 * one to download, not empty, over layers that are all wafers here already (importctl's, and
 * those left for dedupe, become wafers only in later steps).
 */
function streamableLayer(plan: Plan): number | undefined {
  if (plan.copyFrom === undefined) return undefined
  const missing = [...plan.manifest.layers.keys()].filter((i) => !plan.present[i])
  if (missing.length !== 1 || plan.imported.some((dir) => dir !== undefined) || plan.deferred.some(Boolean))
    return undefined
  const [i] = missing
  return plan.manifest.layers[i].size === 0 ? undefined : i
}

/** Thrown inside a layer's unpack when the blob is not there to read as it downloads. */
class NotStreamed extends Error {}

/** The meta.json of the wafer of layer `i` of `plan`. */
function layerMeta(plan: Plan, i: number, diffId: string): WaferMeta {
  return {layer: {chainId: plan.chain[i], diffId, ...(plan.history ? {history: plan.history[i]} : {})}}
}

/** What pulling into NAME does: make it, nothing (it holds this image), or re-point it at this image. */
type Target = {held: ImageMeta; state: 'repoint'} | {state: 'absent'} | {state: 'current'}

/**
 * What pulling `ref` (manifest `digest`, top layer wafer `top`) into NAME does. A NAME that holds
 * the image this reference named before (a moved tag) is re-pointed at the new one when nothing
 * sees the change: no files of its own but its machine id, no children; with `replace`, also
 * then, and a NAME that holds another image. Refuses, changing nothing, a NAME not made from an
 * image, and one that is stacked or otherwise in use (re-pointing it would change the layers
 * under a mounted overlay), naming why.
 */
async function checkTarget(
  store: WaferStore,
  ref: ImageReference,
  name: string,
  digest: string,
  top: string | undefined,
  options: PullOptions,
): Promise<Target> {
  if (!(await store.exists(name))) return {state: 'absent'}
  const meta = readMeta(store.dir(name), name)
  if (meta.image?.digest === digest && (await store.readParent(name)) === top) return {state: 'current'}
  const image = describe(ref)
  const held = meta.image
    ? `the image ${meta.image.ref ?? 'pulled earlier'} (${meta.image.digest ?? 'no digest'})`
    : 'a wafer not pulled from an image'
  const other = `pull into another name (wafers pull ${ref.text} NAME)`
  if (!meta.image) {
    throw new WafersError(`wafer ${name} already exists and holds ${held}, not ${image}.`, {
      suggestions: [`${other[0].toUpperCase()}${other.slice(1)}, or remove it first (wafers rm ${name}).`],
    })
  }

  const moved = meta.image.ref === ref.skopeo
  if (!moved && !options.replace) {
    throw new WafersError(`wafer ${name} already exists and holds ${held}, not ${image}.`, {
      suggestions: [`Add --replace to re-point ${name} at ${image}, or ${other}.`],
    })
  }

  const why = moved ? `${image} now names ${digest}, not the ${meta.image.digest ?? 'image'} ${name} holds` : ''
  await refuseRepointInUse(store, name, why)
  if (!options.replace) {
    const {children, own} = await repointEffects(store, name)
    if (children.length > 0) {
      throw new WafersError(
        `${why}, and ${children.join(', ')} ${children.length === 1 ? 'is' : 'are'} built on ${name}: re-pointing it would change what ${children.length === 1 ? 'it sees' : 'they see'}.`,
        {suggestions: [`Add --replace to re-point ${name} anyway, or ${other}.`]},
      )
    }

    if (own) {
      throw new WafersError(`${why}, and ${name} has files of its own, which would then lie on the new image.`, {
        suggestions: [`Add --replace to re-point ${name} with its files, or ${other}.`],
      })
    }
  }

  return {held: meta.image, state: 'repoint'}
}

/** Refuses to re-point NAME while any stack uses it (mounted, detached but in use, in another namespace). */
async function refuseRepointInUse(store: WaferStore, name: string, why: string): Promise<void> {
  const {hiddenWaferUses, liveStacks} = await import('../mount/usage.js')
  const prefix = why === '' ? `${name} holds another image` : why
  const stack = (await liveStacks(store)).find((live) => live.top === name || live.lowers.includes(name))
  if (stack) {
    throw new WafersError(`${prefix}, but ${name} is stacked at ${stack.mountpoint}; nothing was changed.`, {
      suggestions: [`Unstack it first (wafers unstack ${stack.top ?? name}), then pull again.`],
    })
  }

  const use = (await hiddenWaferUses(store)).find((candidate) => candidate.wafers.includes(name))
  if (use) {
    throw new WafersError(`${prefix}, but ${name} is still in use through ${use.where}; nothing was changed.`)
  }
}

/** What re-pointing NAME would show: the wafers built on it, and whether it has files other than its machine id. */
async function repointEffects(store: WaferStore, name: string): Promise<{children: string[]; own: boolean}> {
  const {readInventory} = await import('../ops/inventory.js')
  const {isEmptyLayer} = await import('../layer/archive.js')
  const {onlyMachineId} = await import('./machine-id.js')
  const children = (await readInventory(store)).children.get(name) ?? []
  const data = store.dataDir(name)
  return {children, own: !(await isEmptyLayer(data)) && !(await onlyMachineId(data))}
}

/**
 * Makes NAME sit on `parent` with `meta`, under the store lock, checking again that no stack uses
 * it; with children, says so through `warn`. Its own files (and machine id) stay.
 */
async function repoint(
  store: WaferStore,
  name: string,
  parent: string | undefined,
  meta: WaferMeta,
  options: PullOptions,
): Promise<void> {
  const {withLock} = await import('../store/lock.js')
  const {writeFileAtomic} = await import('../host/files.js')
  const {writeMeta} = await import('../store/meta.js')
  await withLock(store.root, async () => {
    await refuseRepointInUse(store, name, '')
    const {children, own} = await repointEffects(store, name)
    if (!options.replace && (children.length > 0 || own)) {
      throw new WafersError(`wafer ${name} got children or files of its own meanwhile; it was not re-pointed.`, {
        suggestions: ['Pull again to see why, or add --replace.'],
      })
    }

    if (parent !== undefined && !(await store.hasData(parent))) {
      throw new WafersError(`wafer ${parent} was removed meanwhile; ${name} was not changed.`)
    }

    writeMeta(store.dir(name), meta)
    if (parent === undefined) await fs.rm(store.parentFile(name), {force: true})
    else writeFileAtomic(store.parentFile(name), `${parent}\n`)
    if (children.length > 0) {
      options.warn?.(
        `${name} now sits on the new image; ${children.join(', ')}, built on it, see${children.length === 1 ? 's' : ''} it too (--replace).`,
      )
    }
  })
}

/**
 * Whether the containers trust policy `file` (default /etc/containers/policy.json) might refuse an
 * image of `transport`: anything but a policy that accepts anything there. A policy that cannot
 * be read (a symlink, not JSON) might refuse: skopeo then says why. No default policy file: no.
 */
function policyMayRefuse(file: string | undefined, transport: string): boolean {
  const acceptsAll = (requirements: unknown) =>
    Array.isArray(requirements) &&
    requirements.length > 0 &&
    requirements.every((entry) => (entry as {type?: unknown})?.type === 'insecureAcceptAnything')
  try {
    const text = readStoreFile(file ?? '/etc/containers/policy.json', 'the trust policy')
    // No policy on this machine and none given: nothing to honour (a --policy FILE is there: checked before).
    if (text === undefined) return file !== undefined
    const policy = JSON.parse(text) as {default?: unknown; transports?: Record<string, Record<string, unknown>>}
    const scopes = Object.values(policy.transports?.[transport] ?? {})
    return !acceptsAll(policy.default) || !scopes.every((scope) => acceptsAll(scope))
  } catch {
    return true
  }
}
