/**
 * Opaque markers in both overlay forms at once. wafers' own mounts read `trusted.overlay.opaque`;
 * systemd's (.mstack, always `userxattr`) read only `user.overlay.opaque`; the kernel writes a
 * copy-up's marker in the form of the mount it happens under. A wafer shows the same tree under
 * both mounts when every opaque directory carries both, which syncOpaqueForms restores after
 * either kind of mount has written one. A mount shows the form it does not read as an ordinary
 * attribute, so a directory gets the other form only where a mount of that kind will read it.
 */
import {closeSync, constants, openSync, readdirSync} from 'node:fs'

import {WafersError, isErrno} from '../errors.js'
import {type Xattr, loadXattr} from '../host/xattr.js'
import {OVERLAY_FORMS, type OverlayForm, isOpaqueValue, opaqueAttribute} from './whiteouts.js'

const DIRECTORY = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW

/**
 * Gives every directory under `data` that is opaque in one form the other form too (or only the
 * form `to`, for a mount of that form), and returns how many it changed. Walks by file
 * descriptor, one component at a time without following anything, so a symlink someone put in
 * the wafer never leads it out.
 */
export async function syncOpaqueForms(data: string, to?: OverlayForm): Promise<number> {
  const xattr = await loadXattr()
  let changed = 0
  // Depth first without recursion (a layer may nest thousands of directories), one descriptor per
  // level held while its children are walked; names as bytes, whatever their encoding.
  const root = openSync(data, DIRECTORY)
  const stack: Array<{fd: number; names: Buffer[]}> = []
  const enter = (fd: number) => {
    changed += syncOne(xattr, `/proc/self/fd/${fd}/.`, to)
    const names = readdirSync(`/proc/self/fd/${fd}`, {encoding: 'buffer', withFileTypes: true})
      .filter((entry) => entry.isDirectory())
      .map((entry) => entry.name as unknown as Buffer)
    stack.push({fd, names})
  }

  try {
    enter(root)
    while (stack.length > 0) {
      const top = stack.at(-1)!
      const name = top.names.pop()
      if (name === undefined) {
        stack.pop()
        if (top.fd !== root) closeSync(top.fd)
        continue
      }

      let child: number
      try {
        child = openSync(Buffer.concat([Buffer.from(`/proc/self/fd/${top.fd}/`), name]), DIRECTORY)
      } catch (error) {
        // Gone, or swapped for something that is not a directory meanwhile; never out of descriptors.
        if (isErrno(error, 'EMFILE') || isErrno(error, 'ENFILE')) {
          throw new WafersError(
            `${data} nests directories deeper (${stack.length} levels) than wafers can hold open to mark them for systemd.`,
          )
        }

        continue
      }

      enter(child)
    }
  } finally {
    for (const {fd} of stack) if (fd !== root) closeSync(fd)
    closeSync(root)
  }

  return changed
}

function syncOne(xattr: Xattr, dir: string, to?: OverlayForm): number {
  const marked = OVERLAY_FORMS.filter((form) => isOpaqueValue(xattr.getAttributeSync(dir, opaqueAttribute(form))))
  const missing = OVERLAY_FORMS.filter((form) => !marked.includes(form) && (to === undefined || form === to))
  if (marked.length === 0 || missing.length === 0) return 0
  for (const form of missing) xattr.setAttributeSync(dir, opaqueAttribute(form), 'y')
  return 1
}
