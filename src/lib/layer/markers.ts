/**
 * Opaque markers in both overlay forms at once. wafers' own mounts read `trusted.overlay.opaque`;
 * systemd's (.mstack, always `userxattr`) read only `user.overlay.opaque`; the kernel writes a
 * copy-up's marker in the form of the mount it happens under. A wafer shows the same tree under
 * both mounts when every opaque directory carries both, which syncOpaqueForms restores after
 * either kind of mount has written one.
 */
import {closeSync, constants, openSync, readdirSync} from 'node:fs'

import {type Xattr, loadXattr} from '../host/xattr.js'
import {OVERLAY_FORMS, isOpaqueValue, opaqueAttribute} from './whiteouts.js'

const DIRECTORY = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW

/**
 * Gives every directory under `data` that is opaque in one form the other form too, and returns
 * how many it changed. Walks by file descriptor, one component at a time without following
 * anything, so a symlink someone put in the wafer never leads it out.
 */
export async function syncOpaqueForms(data: string): Promise<number> {
  const xattr = await loadXattr()
  let changed = 0
  const visit = (fd: number): void => {
    const here = `/proc/self/fd/${fd}/.`
    changed += syncOne(xattr, here)
    for (const entry of readdirSync(here, {withFileTypes: true})) {
      if (!entry.isDirectory()) continue
      let child: number
      try {
        child = openSync(`/proc/self/fd/${fd}/${entry.name}`, DIRECTORY)
      } catch {
        continue // gone, or swapped for something that is not a directory meanwhile
      }

      try {
        visit(child)
      } finally {
        closeSync(child)
      }
    }
  }

  const root = openSync(data, DIRECTORY)
  try {
    visit(root)
  } finally {
    closeSync(root)
  }

  return changed
}

function syncOne(xattr: Xattr, dir: string): number {
  const marked = OVERLAY_FORMS.filter((form) => isOpaqueValue(xattr.getAttributeSync(dir, opaqueAttribute(form))))
  if (marked.length === 0 || marked.length === OVERLAY_FORMS.length) return 0
  for (const form of OVERLAY_FORMS) {
    if (!marked.includes(form)) xattr.setAttributeSync(dir, opaqueAttribute(form), 'y')
  }

  return 1
}
