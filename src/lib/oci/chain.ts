import {createHash} from 'node:crypto'

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
