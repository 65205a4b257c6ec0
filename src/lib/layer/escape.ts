/**
 * Applies the attribute policy (xattrs.ts) to a tree copied into a wafer by a program that keeps
 * every attribute (cp -a, GNU tar --xattrs): what that program copied from outside must not reach
 * a mount as an overlay marker.
 */
import {readdirSync} from 'node:fs'

import {WafersError} from '../errors.js'
import {loadXattr} from '../host/xattr.js'
import {storedAttributeName} from './xattrs.js'

/**
 * Renames every overlay attribute of `root` and everything under it (no link followed) to its
 * stored, escaped name (`trusted.overlay.opaque` becomes `trusted.overlay.overlay.opaque`, which a
 * mount shows as `trusted.overlay.opaque` and never acts on), keeping its value. Returns how many
 * it renamed. A name that is not UTF-8 is refused: the xattr binding could not read its attributes.
 */
export async function escapeOverlayAttributes(root: string): Promise<number> {
  const xattr = await loadXattr()
  let renamed = 0
  const visit = (file: string): void => {
    for (const name of xattr.listAttributesSync(file)) {
      const stored = storedAttributeName(name)
      if (stored === name) continue
      const value = xattr.getAttributeSync(file, name)
      if (value === null) continue
      xattr.setAttributeSync(file, stored, value)
      xattr.removeAttributeSync(file, name)
      renamed++
    }
  }

  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, {encoding: 'buffer', withFileTypes: true})) {
      const name = entry.name.toString('utf8')
      const file = `${dir}/${name}`
      if (!Buffer.from(name).equals(entry.name)) {
        throw new WafersError(
          `${JSON.stringify(file)} has a name that is not UTF-8, so wafers cannot check its extended attributes.`,
          {suggestions: ['Rename it to a UTF-8 name and try again.']},
        )
      }

      visit(file)
      if (entry.isDirectory()) walk(file)
    }
  }

  visit(root)
  walk(root)
  return renamed
}
