/**
 * The store's short links (`.links/ID -> ../NAME/data`, as Docker's `l/`): how 500 lower layers fit
 * in the one page of mount options the kernel takes.
 */
import {createHash} from 'node:crypto'
import {promises as fs, lstatSync, readlinkSync} from 'node:fs'
import path from 'node:path'

import {WafersError, asWafersError, isErrno} from '../errors.js'
import {WaferStore} from './store.js'

const LINK_LENGTH = 5
const LINK_ALPHABET = '0123456789abcdefghijklmnopqrstuv'

/**
 * The short link of wafer `name` in the store's links directory (`.links/ID -> ../NAME/data`),
 * made if missing. IDs are derived from the name, probing on collision, so finding a link costs
 * one readlink; like Docker's `l/` links they keep 500 lower layers inside one page of options.
 */
export async function linkFor(store: WaferStore, name: string): Promise<string> {
  const target = path.join('..', name, 'data')
  for (let attempt = 0; ; attempt++) {
    const id = linkId(name, attempt)
    const link = path.join(store.linksDir, id)
    try {
      // Synchronous like the ancestry trace (see readParent in store.ts): 500 of these per deep stack.
      if (readlinkSync(link) === target) return id
      continue
    } catch (error) {
      if (!isErrno(error, 'ENOENT')) throw error
    }

    try {
      await fs.symlink(target, link)
      return id
    } catch (error) {
      // Another wafers made a link with this ID meanwhile: read it again on the next round.
      if (!isErrno(error, 'EEXIST')) throw error
      attempt--
    }
  }
}

/** The short links of `names` (lower wafers, nearest first), made where missing. */
export async function linksFor(store: WaferStore, names: string[]): Promise<string[]> {
  await makeLinksDir(store)
  const ids = []
  for (const name of names) ids.push(await linkFor(store, name))
  return ids
}

/**
 * Makes the store's links directory if missing, and refuses one that is not a real directory: a
 * `.links` symlinked elsewhere would have stack write its links, and mount the stack, out there.
 */
export async function makeLinksDir(store: WaferStore): Promise<void> {
  try {
    await fs.mkdir(store.linksDir)
  } catch (error) {
    if (isErrno(error, 'ENOENT')) {
      throw new WafersError(`${store.linksDir} cannot be made: the store ${store.root} does not exist.`)
    }

    if (!isErrno(error, 'EEXIST')) throw asWafersError(error)
  }

  checkLinksDir(store)
}

/** Refuses a `.links` that is there but is a symlink or not a directory. */
export function checkLinksDir(store: WaferStore): void {
  const stat = lstatSync(store.linksDir, {throwIfNoEntry: false})
  if (stat === undefined || stat.isDirectory()) return
  const what = stat.isSymbolicLink() ? 'a symlink' : 'not a directory'
  throw new WafersError(`${store.linksDir} is ${what}; wafers keeps its links only in a real directory there.`)
}

function linkId(name: string, attempt: number): string {
  const digest = createHash('sha256').update(`${name}\0${attempt}`).digest()
  let id = ''
  for (let i = 0; i < LINK_LENGTH; i++) id += LINK_ALPHABET[digest[i] % LINK_ALPHABET.length]
  return id
}
