import path from 'node:path'

import {WafersError} from '../errors.js'
import {readStoreFile, writeFileAtomic} from '../host/files.js'

/** The file beside `data`, `work` and `parent` that says where a wafer came from; optional. */
export const META_FILE = 'meta.json'

/** The runtime part of an OCI image config (the `config` object of application/vnd.oci.image.config.v1+json). */
export interface ImageConfig {
  Cmd?: string[]
  Entrypoint?: string[]
  Env?: string[]
  ExposedPorts?: Record<string, Record<string, never>>
  /** Docker's config field (not in OCI's): what HEALTHCHECK set. */
  Healthcheck?: Healthcheck
  Labels?: Record<string, string>
  /** Docker's config field (not in OCI's): the ONBUILD triggers a build FROM this image runs. */
  OnBuild?: string[]
  /** Docker's config field (not in OCI's): the shell SHELL set, for RUN, CMD and ENTRYPOINT of later builds. */
  Shell?: string[]
  StopSignal?: string
  User?: string
  Volumes?: Record<string, Record<string, never>>
  WorkingDir?: string
}

/** Docker's health check of an image; durations in nanoseconds. */
export interface Healthcheck {
  Interval?: number
  Retries?: number
  StartPeriod?: number
  /** `["NONE"]`, `["CMD", ARG...]` or `["CMD-SHELL", COMMAND]`. */
  Test: string[]
  Timeout?: number
}

/** One entry of an OCI image config's `history`. */
export interface HistoryEntry {
  author?: string
  comment?: string
  created?: string
  created_by?: string
  empty_layer?: boolean
}

/** A wafer that holds exactly one OCI layer, as unpacked by a pull (or packed by a push). */
export interface LayerMeta {
  /** OCI ChainID of this layer and every layer below it: the wafer's name is derived from it. */
  chainId: string
  /** Digest of the uncompressed layer tar (the config's rootfs.diff_ids entry). */
  diffId: string
  /** The history entries that belong to this layer (the one that made it, and empty ones after it). */
  history?: HistoryEntry[]
}

/** The top wafer of a pulled or built image: where it came from and how to run it. */
export interface ImageMeta {
  architecture: string
  config: ImageConfig
  /** Manifest digest of the image, when it came from one. */
  digest?: string
  /** History of the whole image, bottom first, as its config had it. */
  history?: HistoryEntry[]
  os: string
  /** The reference it was pulled from, or `build:CONTEXT` for a build. */
  ref?: string
  variant?: string
}

/** A wafer made by one step of `wafers build`. */
export interface BuildMeta {
  /** The step's history entry (`empty_layer` when it changed no file), as a push would send it. */
  history?: HistoryEntry[]
  instruction: string
  /** Hash of the parent, instruction, build args and sources: equal keys reuse the wafer. */
  key: string
}

/** Where a wafer taken in from another tool's files came from (`wafers adopt`, a pull reusing a layer). */
export interface ImportedMeta {
  /** The tool whose files these were: systemd's importctl pull-oci. */
  by: 'importctl'
  /** What it had made: `$STACKS/.oci-sha256:HEX` for a layer, `$STACKS/NAME.mstack` for an image's top. */
  from: string
}

/** What wafers knows of a wafer beyond its files; every part is optional. */
export interface WaferMeta {
  build?: BuildMeta
  image?: ImageMeta
  imported?: ImportedMeta
  layer?: LayerMeta
}

/** The metadata of the wafer in directory `dir` (`$WAFERS/NAME` or a staging dir); `{}` when it has none. */
export function readMeta(dir: string, name = path.basename(dir)): WaferMeta {
  const what = `the ${META_FILE} of wafer ${name}`
  const text = readStoreFile(path.join(dir, META_FILE), what)
  if (text === undefined) return {}
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw new WafersError(`${what} is not valid JSON.`)
  }

  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new WafersError(`${what} is not a JSON object.`)
  }

  return value as WaferMeta
}

/** Replaces the metadata of the wafer in directory `dir` atomically. */
export function writeMeta(dir: string, meta: WaferMeta): void {
  writeFileAtomic(path.join(dir, META_FILE), `${JSON.stringify(meta, null, 2)}\n`)
}
