import {promises as fs} from 'node:fs'

import {WafersError, isErrno} from '../errors.js'

/** statfs magic numbers of file systems overlayfs cannot use for an upper layer. */
const UNFIT_UPPERS: Record<number, string> = {
  0x20_11_ba_b0: 'exFAT',
  0x4d_44: 'FAT',
  0x53_46_54_4e: 'NTFS',
  0x69_69: 'NFS',
  0x73_66_74_6e: 'NTFS (ntfs3)',
  0x73_71_73_68: 'squashfs',
  0x79_4c_76_30: 'overlayfs',
}

/** Refuses to go on without root: only root may mount. */
export function checkRoot(): void {
  if (process.getuid?.() !== 0) {
    throw new WafersError('wafers must run as root to mount and unmount stacks.', {suggestions: ['Run it with sudo.']})
  }
}

/** Refuses when the running kernel has no overlayfs (and it cannot be seen as a module either). */
export async function checkOverlayfs(filesystems = '/proc/filesystems', module = '/sys/module/overlay'): Promise<void> {
  let text = ''
  try {
    text = await fs.readFile(filesystems, 'utf8')
  } catch (error) {
    if (!isErrno(error, 'ENOENT')) throw error
  }

  if (/\toverlay$/m.test(text)) return
  const loaded = await fs.readdir(module).catch(() => undefined)
  if (loaded) return
  // Built as a module and not loaded yet (Debian's default until the first overlay mount).
  if (filesystems === '/proc/filesystems' && (await modprobe('overlay'))) return
  throw new WafersError('this kernel has no overlayfs, which wafers needs for stacks of more than one wafer.', {
    suggestions: ['Load it with `modprobe overlay`, or use a kernel built with CONFIG_OVERLAY_FS.'],
  })
}

/** Refuses a `$WAFERS` on a file system that overlayfs cannot use as an upper layer. */
export async function checkUpperFilesystem(wafers: string): Promise<void> {
  const stat = await fs.statfs(wafers)
  const kind = UNFIT_UPPERS[Number(stat.type)]
  if (kind !== undefined) {
    throw new WafersError(
      `${wafers} is on ${kind}, which overlayfs cannot use for a writable layer (it needs d_type and xattrs).`,
      {suggestions: ['Set WAFERS to a directory on ext4, xfs, btrfs or tmpfs.']},
    )
  }
}

/** Loads kernel module `name`; false when that fails (no modprobe, no such module, no right to). */
async function modprobe(name: string): Promise<boolean> {
  const {run} = await import('./run.js')
  return run('modprobe', [name]).then(
    () => true,
    () => false,
  )
}
