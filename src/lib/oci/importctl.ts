/**
 * Living beside systemd's `importctl pull-oci` (systemd 260+, src/import/pull-oci.c), which
 * leaves in $STACKS (its image root, /var/lib/machines):
 * - `.oci-sha256:HEX`, each layer unpacked once, HEX the layer blob's digest as the manifest
 *   names it (the compressed blob's, not the diff_id), its top directory made immutable;
 * - `NAME.mstack/` with `layer@K -> ../.oci-sha256:HEX` (K from 0, bottom first) and an empty
 *   `rw/` (where systemd-mstack makes `data/` and `work/` when the machine first runs);
 * - `NAME.nspawn` (Parameters=, Environment=, User=, WorkingDirectory=, KillSignal=) and
 *   `NAME.oci-config` (the image config, byte for byte).
 * wafers takes such an image in (adoptSteps) and reuses such a layer in a pull
 * (findImportedLayer), by hard links (layer/imported.ts): importctl's trees stay as they are.
 */
import {closeSync, constants, promises as fs, lstatSync, openSync, readdirSync, readlinkSync, renameSync} from 'node:fs'
import path from 'node:path'

import {WafersError, asWafersError, isErrno} from '../errors.js'
import {readStoreFile, removeTree} from '../host/files.js'
import {checkRoot} from '../host/system.js'
import {checkRootsAlone, takeImportedLayer} from '../layer/imported.js'
import {syncOpaqueForms} from '../layer/markers.js'
import {mstackInUse, mstackPath, readMstack, writeMstack} from '../mount/mstack.js'
import {type ImageMeta, type WaferMeta, readMeta} from '../store/meta.js'
import {traceAncestry} from '../store/ancestry.js'
import {checkName} from '../store/names.js'
import {type Locations, WaferStore} from '../store/store.js'
import type {Step} from '../steps.js'
import {plural} from '../ui/render.js'
import {chainIds, layerPresent, layerWaferName} from './chain.js'
import {type ImageConfigFile, checkConfig, historyPerLayer} from './image.js'
import {parseJson} from './layout.js'

/** The directory importctl unpacks the layer blob `digest` (sha256:HEX) to, in its image root. */
export function importedLayerDir(stacks: string, digest: string): string {
  return path.join(stacks, `.oci-${digest}`)
}

/**
 * The directory importctl unpacked layer blob `digest` to, when there is one: a real directory,
 * never a link (importctl itself would follow one; wafers takes only what importctl made).
 */
export function findImportedLayer(stacks: string, digest: string): string | undefined {
  if (!/^sha256:[\da-f]{64}$/.test(digest)) return undefined
  const dir = importedLayerDir(stacks, digest)
  return lstatSync(dir, {throwIfNoEntry: false})?.isDirectory() ? dir : undefined
}

/** An image importctl pulled, as read from $STACKS. */
export interface ImportedImage {
  config: ImageConfigFile
  /** Bottom first: the blob digest and importctl's directory of each layer. */
  layers: Array<{digest: string; dir: string}>
  mstack: string
  name: string
  /** Its writable layer's directory (`rw`), absent for an image imported read-only. */
  rw?: string
}

const LAYER_LINK = /^\.\.\/\.oci-(sha256:[\da-f]{64})$/

/**
 * Reads the image importctl pulled as NAME, refusing, in one sentence that names what is wrong, an
 * `.mstack` importctl did not write (other entries, links elsewhere, gaps), missing layers, and a
 * missing or bad NAME.oci-config. Follows no link: the `layer@K` links are read, not followed.
 */
export function readImportedImage(store: WaferStore, stacks: string, name: string): ImportedImage {
  const mstack = mstackPath(stacks, name)
  const stat = lstatSync(mstack, {throwIfNoEntry: false})
  if (!stat?.isDirectory()) {
    throw new WafersError(
      stat === undefined
        ? `importctl pulled no image ${name} here: ${mstack} does not exist.`
        : `${mstack} is not a directory, so not an image importctl pulled.`,
      {suggestions: ['Pull it first: importctl pull-oci REF ' + name]},
    )
  }

  // importctl's files are taken on the word of who wrote them: root alone (see checkRootsAlone).
  checkRootsAlone(mstack, `${name} was not adopted`)
  checkRootsAlone(path.join(stacks, `${name}.oci-config`), `${name} was not adopted`)
  if (readMstack(store, mstack) !== undefined) {
    throw new WafersError(
      `${mstack} already stacks wafers (wafers stack --mstack wrote it); there is nothing to adopt.`,
    )
  }

  const digests: string[] = []
  let rw: string | undefined
  for (const entry of readdirSync(mstack).sort()) {
    const file = path.join(mstack, entry)
    const layer = /^layer@(\d+)$/.exec(entry)
    if (layer) {
      const target = lstatSync(file).isSymbolicLink() ? readlinkSync(file) : ''
      const match = LAYER_LINK.exec(target)
      if (!match) {
        throw new WafersError(
          `${file} is not a link to a layer importctl unpacked (../.oci-sha256:HEX); ${name} was not adopted.`,
        )
      }

      digests[Number(layer[1])] = match[1]
    } else if (entry === 'rw' && lstatSync(file).isDirectory()) {
      const others = readdirSync(file).filter(
        (one) => !['data', 'work'].includes(one) || !lstatSync(path.join(file, one)).isDirectory(),
      )
      if (others.length > 0) {
        throw new WafersError(
          `${file} holds ${others.slice(0, 3).join(', ')}, which systemd does not make there; ${name} was not adopted.`,
        )
      }

      rw = file
    } else {
      throw new WafersError(`${file} is not something importctl pull-oci writes; ${name} was not adopted.`)
    }
  }

  if (digests.length === 0) throw new WafersError(`${mstack} has no layer@ links; ${name} was not adopted.`)
  const gap = [...digests.keys()].find((k) => digests[k] === undefined)
  if (gap !== undefined) throw new WafersError(`${mstack} has no layer@${gap}; ${name} was not adopted.`)
  const layers = digests.map((digest, k) => {
    const dir = findImportedLayer(stacks, digest)
    if (dir === undefined) {
      throw new WafersError(
        `${importedLayerDir(stacks, digest)}, layer ${k + 1} of ${name}, is missing or not a directory; ${name} was not adopted.`,
      )
    }

    return {digest, dir}
  })
  const what = `the config importctl wrote for ${name} (${path.join(stacks, `${name}.oci-config`)})`
  const text = readStoreFile(path.join(stacks, `${name}.oci-config`), what)
  if (text === undefined) {
    throw new WafersError(
      `importctl wrote no ${name}.oci-config (the image has no config), and wafers names layers by their diff_ids; ${name} was not adopted.`,
    )
  }

  const config = checkConfig(parseJson(Buffer.from(text), what), layers.length, what)
  return {config, layers, mstack, name, ...(rw === undefined ? {} : {rw})}
}

/** One layer of an adopted image. */
export interface AdoptedLayer {
  digest: string
  /** importctl's directory it was taken from. */
  from: string
  /** Whether adopt made the wafer; false when it was already here (pulled by wafers, or adopted before). */
  made: boolean
  wafer: string
}

/** What `wafers adopt NAME` did, as --json prints it. */
export interface AdoptResult {
  layers: AdoptedLayer[]
  /** The `.mstack`, now written by wafers: its layers the layer wafers, its rw the wafer NAME. */
  mstack: string
  /** Whether the machine had changed files (rw/data), now NAME's data. */
  moved: boolean
  name: string
  /** Whether this run only finished an adopt of NAME that stopped before rewriting NAME.mstack. */
  resumed: boolean
}

/**
 * The steps that adopt the image importctl pulled as NAME: `resolve` reads and checks it (and that
 * no machine runs on it), then `steps()` takes each layer in as a layer wafer (hard links, none
 * copied), moves the machine's own files (`rw/data`) into the new wafer NAME on top, and rewrites
 * NAME.mstack as `wafers stack NAME --mstack` writes it, so the machine keeps its name, files and
 * settings (NAME.nspawn stays as importctl wrote it). importctl's layers stay for its other images.
 */
export function adoptSteps(locations: Locations, name: string): {resolve: Step; result: AdoptResult; steps(): Step[]} {
  const store = new WaferStore(locations.wafers)
  const result: AdoptResult = {
    layers: [],
    mstack: mstackPath(locations.stacks, name),
    moved: false,
    name,
    resumed: false,
  }
  let image: ImportedImage | undefined
  let present: boolean[] = []
  /** NAME and the wafers below it, when an adopt of NAME stopped before its rewrite. */
  let left: string[] | undefined
  const refuseInUse = async () => {
    const use = await mstackInUse(result.mstack)
    if (use !== undefined) {
      throw new WafersError(`${result.mstack} is ${use}: a machine runs on it; nothing was moved.`, {
        suggestions: [`Stop the machine first (machinectl stop ${name}), then adopt it.`],
      })
    }
  }

  const resolve: Step = {
    async run() {
      checkRoot()
      checkName(name)
      if (await store.exists(name)) {
        // An adopt stopped after the machine's files became wafer NAME: what is left is the rewrite.
        left = await adoptLeft(store, locations.stacks, name)
        if (left !== undefined) {
          await refuseInUse()
          result.moved = readdirSync(store.dataDir(name)).length > 0
          result.resumed = true
          result.layers = left
            .slice(1)
            .map((wafer) => ({digest: '', from: '', made: false, wafer}))
            .reverse()
          return `Found ${name} adopted from ${result.mstack} but for its rewrite`
        }

        throw new WafersError(`wafer ${name} already exists; ${name} was not adopted.`, {
          suggestions: [`Rename or remove wafer ${name} first (wafers mv, wafers rm).`],
        })
      }

      image = readImportedImage(store, locations.stacks, name)
      await refuseInUse()
      const names = chainIds(image.config.rootfs.diff_ids).map((chainId) => layerWaferName(chainId))
      const chain = chainIds(image.config.rootfs.diff_ids)
      present = []
      for (const [i, layer] of image.layers.entries()) {
        present.push(await layerPresent(store, names[i], chain[i], i === 0 ? undefined : names[i - 1]))
        result.layers.push({digest: layer.digest, from: layer.dir, made: false, wafer: names[i]})
      }

      const fresh = present.filter((here) => !here).length
      return `Read ${name} from importctl: ${plural(image.layers.length, 'layer')}, ${fresh} not yet wafers`
    },
    title: `Read the image importctl pulled as ${name}`,
  }

  /**
   * The last step: empties what importctl wrote in NAME.mstack and writes STACK (NAME first) there.
   * A resumed adopt may have stopped after the emptying, so it empties only what is still there.
   */
  const rewrite = (stack: string[], resumed: boolean): Step => ({
    async run() {
      if (!resumed || lstatSync(result.mstack, {throwIfNoEntry: false}) !== undefined) {
        await removeImportctlMstack(result).catch((error: unknown) => {
          throw new WafersError(
            `${result.mstack} could not be emptied (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); wafer ${name} holds the machine: remove what is left there, then run wafers stack ${name} --mstack.`,
          )
        })
      }

      await writeMstack(store, locations.stacks, stack)
      return `Rewrote ${result.mstack} to stack ${name}${resumed ? ', finishing the adopt that stopped' : ''}`
    },
    title: `Rewrite ${path.basename(result.mstack)} to stack the wafers`,
  })

  const steps = (): Step[] => {
    if (left !== undefined) return [rewrite(left, true)]

    const current = image!
    const chain = chainIds(current.config.rootfs.diff_ids)
    const history = historyPerLayer(current.config.history, current.layers.length)
    const layerSteps = current.layers.map((layer, i): Step => {
      const adopted = result.layers[i]
      return {
        async run() {
          adopted.made = await takeLayer(store, {
            dir: layer.dir,
            lowers: result.layers
              .slice(0, i)
              .reverse()
              .map((below) => store.dataDir(below.wafer)),
            meta: {
              imported: {by: 'importctl', from: layer.dir},
              layer: {
                chainId: chain[i],
                diffId: current.config.rootfs.diff_ids[i],
                ...(history ? {history: history[i]} : {}),
              },
            },
            parent: i === 0 ? undefined : result.layers[i - 1].wafer,
            wafer: adopted.wafer,
            what: `layer ${i + 1} of ${name} (${layer.dir})`,
          })
          return adopted.made
            ? `Took layer ${i + 1} in as ${adopted.wafer}`
            : `Layer ${i + 1} is already here as ${adopted.wafer}`
        },
        skip: () => (present[i] ? `layer ${i + 1} is already here as ${adopted.wafer}` : undefined),
        title: `Take layer ${i + 1}/${current.layers.length} ${layer.digest.slice(7, 19)} in as ${adopted.wafer} (hard links)`,
      }
    })
    const top: Step = {
      async run() {
        await refuseInUse()
        const parent = result.layers.at(-1)!.wafer
        const meta: WaferMeta = {image: imageMeta(current.config), imported: {by: 'importctl', from: current.mstack}}
        await store.create(name, parent, {meta, parentData: store.dataDir(parent)})
        result.moved = await moveMachineFiles(store, current, name)
        return result.moved ? `Made ${name} on ${parent} with the machine's own files` : `Made ${name} on ${parent}`
      },
      title: `Make wafer ${name} of the machine's own files`,
    }
    // A refusal half way takes back the layer wafers this adopt made (its own links to importctl's
    // files; importctl's stay), so a refused adopt leaves the store as it found it.
    const undoing = (step: Step): Step => ({
      ...step,
      async run(report) {
        try {
          return await step.run(report)
        } catch (error) {
          for (const layer of [...result.layers].reverse()) {
            if (!layer.made) continue
            await removeTree(store.dir(layer.wafer)).catch(() => {})
            layer.made = false
          }

          throw error
        }
      },
    })
    return [
      ...layerSteps.map((step) => undoing(step)),
      undoing(top),
      rewrite([name, ...result.layers.map((layer) => layer.wafer).reverse()], false),
    ]
  }

  return {resolve, result, steps}
}

/** The top wafer's image metadata, from the config alone (importctl keeps neither the reference nor the manifest digest). */
function imageMeta(config: ImageConfigFile): ImageMeta {
  return {
    architecture: config.architecture,
    config: config.config ?? {},
    ...(config.history ? {history: config.history} : {}),
    os: config.os,
    ...(config.variant ? {variant: config.variant} : {}),
  }
}

/**
 * Makes layer wafer `wafer` on `parent` of importctl's directory `dir` by hard links (`lowers`,
 * the data of the wafers below, nearest first; `what` names the layer in refusals); false when
 * another run made the same layer wafer meanwhile.
 */
export async function takeLayer(
  store: WaferStore,
  {
    dir,
    lowers,
    meta,
    parent,
    wafer,
    what,
  }: {
    dir: string
    lowers: string[]
    meta: WaferMeta
    parent: string | undefined
    wafer: string
    what: string
  },
): Promise<boolean> {
  try {
    await store.create(wafer, parent, {
      async fill(data) {
        await takeImportedLayer(dir, data, lowers, what)
      },
      meta,
    })
    return true
  } catch (error) {
    if (await layerPresent(store, wafer, meta.layer!.chainId, parent).catch(() => false)) return false
    throw error
  }
}

/**
 * Moves the machine's changed files (`rw/data`, which systemd made the first time it ran) into
 * wafer `name` as its data, marking opaque directories in both forms (systemd's mount wrote only
 * the user one). Through a descriptor of `rw` held open, never following a link; undoes itself
 * (removing the still empty wafer) if the move fails. Returns false when the machine never ran.
 */
async function moveMachineFiles(store: WaferStore, image: ImportedImage, name: string): Promise<boolean> {
  if (image.rw === undefined) return false
  let rwFd: number
  try {
    rwFd = openSync(image.rw, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  } catch (error) {
    // Swapped for something else since it was read: the new wafer goes again, still empty.
    await fs.rm(store.dir(name), {force: true, recursive: true})
    throw isErrno(error, 'ELOOP') || isErrno(error, 'ENOTDIR')
      ? new WafersError(`${image.rw} changed into something else while it was adopted; ${name} was not adopted.`)
      : asWafersError(error)
  }

  try {
    const from = `/proc/self/fd/${rwFd}/data`
    if (!lstatSync(from, {throwIfNoEntry: false})?.isDirectory()) return false
    const to = store.dataDir(name)
    await fs.rmdir(to)
    try {
      renameSync(from, to)
      if (!lstatSync(to).isDirectory()) {
        renameSync(to, from)
        throw new WafersError(
          `${image.rw}/data changed into something else while it was moved; ${name} was not adopted.`,
        )
      }
    } catch (error) {
      await fs.mkdir(to).catch(() => {})
      await fs.rm(store.dir(name), {force: true, recursive: true})
      if (isErrno(error, 'EXDEV')) {
        throw new WafersError(
          `${image.rw} is on another file system than WAFERS, and the machine's files are moved, never copied; ${name} was not adopted.`,
          {suggestions: ['Keep WAFERS and STACKS on one file system.']},
        )
      }

      throw asWafersError(error)
    }
  } finally {
    closeSync(rwFd)
  }

  await syncOpaqueForms(store.dataDir(name))
  return true
}

/**
 * NAME and the wafers below it, nearest first, when wafer NAME is what an adopt of NAME.mstack made
 * before it stopped: its meta says importctl's NAME.mstack, that is still not written by wafers,
 * is root's alone, and no longer holds the machine's files (rw/data); undefined otherwise.
 */
async function adoptLeft(store: WaferStore, stacks: string, name: string): Promise<string[] | undefined> {
  const mstack = mstackPath(stacks, name)
  const meta = readMeta(store.dir(name), name)
  if (meta.imported?.by !== 'importctl' || meta.imported.from !== mstack || meta.image === undefined) return undefined
  const stat = lstatSync(mstack, {throwIfNoEntry: false})
  if (stat !== undefined) {
    if (!stat.isDirectory() || readMstack(store, mstack) !== undefined) return undefined
    checkRootsAlone(mstack, `${name} was not adopted`)
    if (lstatSync(path.join(mstack, 'rw', 'data'), {throwIfNoEntry: false}) !== undefined) return undefined
  }

  const stack = await traceAncestry(store, name)
  return stack.length > 1 ? stack : undefined
}

/** Removes what importctl wrote in NAME.mstack (its layer@ links, rw and its scratch work/) once rw/data is moved out. */
async function removeImportctlMstack(image: Pick<ImportedImage, 'mstack'>): Promise<void> {
  const fd = openSync(image.mstack, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  try {
    const held = `/proc/self/fd/${fd}`
    for (const entry of readdirSync(held)) {
      const file = path.join(held, entry)
      if (/^layer@\d+$/.test(entry) && lstatSync(file).isSymbolicLink()) await fs.unlink(file)
      else if (entry === 'rw' && lstatSync(file).isDirectory()) {
        // Only systemd's scratch is left there: rw/data became the wafer. Through a descriptor of
        // rw, never its name again (swapped for a link meanwhile, it would lead rm elsewhere), and
        // by the system's rm, which follows no link inside either.
        const rwFd = openSync(file, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
        try {
          await removeTree(`/proc/${process.pid}/fd/${rwFd}/work`)
        } finally {
          closeSync(rwFd)
        }

        await fs.rmdir(file)
      }
    }
  } finally {
    closeSync(fd)
  }

  await fs.rmdir(image.mstack)
}
