import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {WaferStore} from './store.js'

/** overlayfs takes at most 500 lower layers in one mount. */
export const MAX_LOWER_LAYERS = 500
/** The deepest stack: one upper wafer and 500 lower ones. */
export const MAX_STACK_DEPTH = MAX_LOWER_LAYERS + 1

/**
 * The wafers of `name`'s stack, top first, traced through `parent` files. With `parent`, the
 * trace starts there instead of at `name`'s own parent file (for a wafer about to be created).
 * Refuses missing ancestors, cycles and stacks deeper than overlayfs allows, reading at most
 * MAX_STACK_DEPTH + 1 parent files.
 */
export async function traceAncestry(store: WaferStore, name: string, parent?: string): Promise<string[]> {
  const chain = [name]
  let child = name
  let next = parent ?? (await store.readParent(name))
  while (next !== undefined) {
    if (chain.includes(next)) {
      const loop = [...chain.slice(chain.indexOf(next)), next].join(' -> ')
      throw new WafersError(`the ancestry of wafer ${name} loops: ${loop}.`)
    }

    if (!(await store.hasData(next))) {
      const where = (await store.exists(next)) ? 'has no data directory' : `not found in ${store.root}`
      throw new WafersError(`wafer ${next}, the parent of ${child}, ${where}.`)
    }

    chain.push(next)
    if (chain.length > MAX_STACK_DEPTH) {
      throw new WafersError(
        `the stack of wafer ${name} is deeper than ${MAX_STACK_DEPTH} wafers; overlayfs mounts at most ${MAX_LOWER_LAYERS} lower layers under one upper wafer.`,
      )
    }

    child = next
    next = await store.readParent(next)
  }

  return chain
}

/**
 * The nearest `etc/machine-id` in the given layers (data directories, top first), as an overlay
 * would show it: a regular file, or undefined when the top-most entry is missing or a whiteout.
 */
export async function findMachineId(layers: string[]): Promise<string | undefined> {
  for (const data of layers) {
    const file = path.join(data, 'etc', 'machine-id')
    try {
      const stat = await fs.lstat(file)
      return stat.isFile() ? file : undefined
    } catch (error) {
      if (!isErrno(error, 'ENOENT') && !isErrno(error, 'ENOTDIR')) throw error
    }
  }

  return undefined
}
