/**
 * The one policy for extended attributes that cross into or out of a wafer, as umoci's xattr.go
 * keeps one for its unpacker: for every attribute name, what an unpack writes, and what a pack
 * puts in a layer.
 *
 * Overlay's own attributes (`trusted.overlay.*`, and `user.overlay.*` that `userxattr` mounts
 * read) decide how a stack reads: an opaque mark hides the layers below, a redirect points a
 * directory at another path. No input that wafers did not make itself (a pulled layer, ADD or
 * COPY, a seeder's tarball or directory) may set one. They are escaped instead, as the kernel
 * (6.7+) reads nested overlays: `trusted.overlay.X` is stored as `trusted.overlay.overlay.X`,
 * which a mount shows inside the stack as `trusted.overlay.X` again and never acts on. Packing
 * reverses the escape, so such an attribute round-trips exactly; the markers wafers wrote itself
 * (opaque) travel as the layer format's own `.wh..wh..opq`, and the rest of overlay's bookkeeping
 * (origin, impure, nlink, upper, uuid) stays home.
 */
import {OVERLAY_FORMS, opaqueAttribute, overlayPrefix} from './whiteouts.js'

const ESCAPE = 'overlay.'

/** The overlay prefix (`trusted.overlay.` or `user.overlay.`) a name starts with, if any. */
function overlayPrefixOf(name: string): string | undefined {
  for (const form of OVERLAY_FORMS) {
    const prefix = overlayPrefix(form)
    if (name.startsWith(prefix)) return prefix
  }

  return undefined
}

/**
 * The name under which an attribute from input wafers did not make is stored in a wafer: the
 * same name, except that an overlay attribute is escaped so no mount acts on it.
 */
export function storedAttributeName(name: string): string {
  const prefix = overlayPrefixOf(name)
  return prefix === undefined ? name : `${prefix}${ESCAPE}${name.slice(prefix.length)}`
}

/** What packing does with an attribute found on a file in a wafer. */
export type PackedAttribute =
  | {action: 'keep'; name: string}
  /** The opaque marker: the pack writes `.wh..wh..opq` instead. */
  | {action: 'opaque'}
  /** Overlay state a layer cannot carry (a redirect, a metacopy): the pack refuses the file. */
  | {action: 'refuse'}
  /** Overlay bookkeeping of this host only (origin, impure, nlink, upper, uuid...). */
  | {action: 'drop'}

const REFUSED = new Set(['redirect', 'metacopy'])

/** What a pack does with attribute `name` of a file in a wafer (see the module's comment). */
export function packedAttribute(name: string): PackedAttribute {
  const prefix = overlayPrefixOf(name)
  if (prefix === undefined) return {action: 'keep', name}
  const rest = name.slice(prefix.length)
  if (rest.startsWith(ESCAPE)) return {action: 'keep', name: `${prefix}${rest.slice(ESCAPE.length)}`}
  if (OVERLAY_FORMS.some((form) => opaqueAttribute(form) === name)) return {action: 'opaque'}
  if (REFUSED.has(rest)) return {action: 'refuse'}
  return {action: 'drop'}
}

/**
 * What a copy from one wafer's tree into another (COPY --from a stage, cp, flatten) does with an
 * attribute it read through a mounted stack, where overlay's own attributes are already hidden:
 * the same as input from outside (the name escaped if it is an overlay one).
 */
export const copiedAttributeName = storedAttributeName
