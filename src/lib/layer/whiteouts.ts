/**
 * Every name overlayfs and OCI layers use to say "deleted" or "hides what is below", in one place,
 * for reading and writing alike.
 *
 * On disk (a wafer's data/, as overlayfs reads an upper or lower layer): a whiteout is a character
 * device 0/0; an opaque directory carries the attribute `<form>.overlay.opaque` = "y", where the
 * form is `trusted` for mounts made by root without `userxattr` (wafers' own) and `user` for
 * `userxattr` mounts (unprivileged ones, and systemd's .mstack, which only reads user.overlay.*).
 * In a layer tar (OCI image spec, "Whiteouts"): `.wh.NAME` deletes NAME, `.wh..wh..opq` makes its
 * directory opaque, and other `.wh..wh.` names are aufs metadata, dropped as containerd does.
 */

/** The prefix of an OCI whiteout entry's base name. */
export const WHITEOUT_PREFIX = '.wh.'
/** The base name of an OCI opaque-directory marker. */
export const OPAQUE_WHITEOUT = '.wh..wh..opq'
/** The prefix of aufs metadata names (.wh..wh.plnk and such), which no wafer keeps. */
export const AUFS_META_PREFIX = '.wh..wh.'

/** Which attribute namespace an overlay mount reads its markers from. */
export type OverlayForm = 'trusted' | 'user'

/** Both forms, the kernel's own (trusted) first. */
export const OVERLAY_FORMS: readonly OverlayForm[] = ['trusted', 'user']

/** `trusted.overlay.` or `user.overlay.`: the attributes an overlay mount of that form reads. */
export function overlayPrefix(form: OverlayForm): string {
  return `${form}.overlay.`
}

/** The attribute that marks a directory opaque in that form. */
export function opaqueAttribute(form: OverlayForm = 'trusted'): string {
  return `${form}.overlay.opaque`
}

/** The value of an opaque marker. */
export const OPAQUE_VALUE = 'y'

/** Whether a file's lstat says it is an overlayfs whiteout (a character device 0/0). */
export function isWhiteout(stat: {isCharacterDevice(): boolean; rdev: bigint | number}): boolean {
  return stat.isCharacterDevice() && Number(stat.rdev) === 0
}

/** Whether an opaque attribute's value marks the directory opaque. */
export function isOpaqueValue(value: Buffer | null | undefined): boolean {
  return value?.toString('latin1') === OPAQUE_VALUE
}

/** The two ways a tar entry's base name speaks of whiteouts, or 'plain' for an ordinary name. */
export function whiteoutKind(base: Buffer | string): 'aufs' | 'opaque' | 'plain' | 'whiteout' {
  const name = typeof base === 'string' ? base : base.toString('latin1')
  if (!name.startsWith(WHITEOUT_PREFIX)) return 'plain'
  if (name === OPAQUE_WHITEOUT) return 'opaque'
  if (name.startsWith(AUFS_META_PREFIX)) return 'aufs'
  return 'whiteout'
}

/** The major number of a device number as lstat gives it (glibc's encoding). */
export function major(rdev: bigint | number): number {
  const dev = BigInt(rdev)
  return Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & 0xfffff000n))
}

/** The minor number of a device number as lstat gives it (glibc's encoding). */
export function minor(rdev: bigint | number): number {
  const dev = BigInt(rdev)
  return Number((dev & 0xffn) | ((dev >> 12n) & 0xffffff00n))
}
