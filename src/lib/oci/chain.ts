import {createHash} from 'node:crypto'

import {WafersError} from '../errors.js'
import {readMeta} from '../store/meta.js'
import type {WaferStore} from '../store/store.js'

/**
 * OCI ChainIDs of a stack of layers, bottom first: the first layer's is its DiffID, each next one
 * `sha256(ChainID(below) + " " + DiffID)`. Equal ChainIDs mean equal stacks of layers.
 */
export function chainIds(diffIds: string[]): string[] {
  const chain: string[] = []
  for (const diffId of diffIds) {
    const below = chain.at(-1)
    chain.push(
      below === undefined ? diffId : `sha256:${createHash('sha256').update(`${below} ${diffId}`).digest('hex')}`,
    )
  }

  return chain
}

/**
 * The wafer that holds the layer with ChainID `chainId`: `layer-` and the first 32 hex digits
 * (128 bits: no accidental collision; meta.json holds the whole ChainID and is checked on reuse).
 */
export function layerWaferName(chainId: string): string {
  return `layer-${chainId.replace(/^sha256:/, '').slice(0, 32)}`
}

/**
 * Whether wafer `name` already holds the layer with ChainID `chainId` on `parent`. Refuses a wafer
 * of that name that holds something else: it is never overwritten.
 */
export async function layerPresent(
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
