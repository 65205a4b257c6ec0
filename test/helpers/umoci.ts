import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

/** What makeUmociImage put in the image, for tests to check the layers really carry it. */
export const UMOCI_IMAGE_FEATURES = {
  /** Removed in layer 2 (whiteouts of files and a directory from layer 1). */
  deleted: ['gone/file1', 'gone-dir', 'gone-too'],
  device: 'dev/zero5',
  hardLinks: ['data/hl-a', 'data/hl-b', 'data/hl2-a', 'data/hl2-b'],
  /** Made opaque in layer 3: its layer 1 files are hidden, new1 shows. */
  opaque: 'opaque',
  owned: 'data/owned',
  setuid: 'usr/bin/suid',
  symlink: 'data/link',
  xattrs: 'data/xattr-file',
}

async function run(command: string, args: string[], cwd?: string): Promise<void> {
  await execa(command, args, {cwd, stdin: 'ignore'})
}

async function write(file: string, content: string, mode = 0o644): Promise<void> {
  await fs.mkdir(path.dirname(file), {recursive: true})
  await fs.writeFile(file, content, {mode})
  await fs.chmod(file, mode)
}

/**
 * Builds with umoci, in the OCI layout `layoutDir` (made if missing) under `tag`, a three-layer
 * image a container can run (`/bin/sh`, `ls`, `cat` from busybox-static):
 * 1. a busybox root with a setuid file, a file owned by 1234:5678, hard links, a symlink, a
 *    character device, a file with user.*, trusted.* and security.capability xattrs, and the
 *    files the next layers delete or hide;
 * 2. (`umoci repack`) whiteouts of a file, of a top-level file and of a whole directory from
 *    layer 1, a changed file, a new hard-link pair and a new file with an xattr;
 * 3. (`umoci raw add-layer`) the directory `opaque` made opaque, with one new file.
 * Old fixed mtimes make mtime checks meaningful. `trustedXattr: false` leaves the trusted.*
 * attribute out (systemd-pull 262 unpacks without the privilege to set one, and fails).
 */
export async function makeUmociImage(
  layoutDir: string,
  tag: string,
  {trustedXattr = true}: {trustedXattr?: boolean} = {},
): Promise<void> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-umoci-'))
  const image = `${layoutDir}:${tag}`
  try {
    if (!(await fs.stat(path.join(layoutDir, 'oci-layout')).catch(() => undefined))) {
      await run('umoci', ['init', '--layout', layoutDir])
    }

    await run('umoci', ['new', '--image', image])

    // Layer 1.
    const one = path.join(work, 'one')
    await run('umoci', ['unpack', '--image', image, one])
    const root = path.join(one, 'rootfs')
    for (const dir of ['bin', 'dev', 'etc', 'tmp', 'usr/bin', 'data', 'gone', 'gone-dir/sub', 'opaque']) {
      await fs.mkdir(path.join(root, dir), {recursive: true})
    }

    await fs.chmod(path.join(root, 'tmp'), 0o1777)
    await fs.copyFile('/bin/busybox', path.join(root, 'bin/busybox'))
    await fs.chmod(path.join(root, 'bin/busybox'), 0o755)
    for (const applet of ['sh', 'ls', 'cat', 'stat']) {
      await fs.symlink('busybox', path.join(root, 'bin', applet))
    }

    await write(path.join(root, 'etc/hostname'), 'umoci\n')
    await write(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/:/bin/sh\nowner:x:1234:5678::/:/bin/sh\n')
    await write(path.join(root, 'etc/group'), 'root:x:0:\nowners:x:5678:\n')
    await write(path.join(root, 'gone/file1'), 'deleted in layer 2\n')
    await write(path.join(root, 'gone/file2'), 'kept\n')
    await write(path.join(root, 'gone-dir/sub/deep'), 'deleted with its directory\n')
    await write(path.join(root, 'gone-too'), 'deleted in layer 2\n')
    await write(path.join(root, 'opaque/old1'), 'hidden by layer 3\n')
    await write(path.join(root, 'opaque/old2'), 'hidden by layer 3\n')
    await write(path.join(root, 'data/owned'), 'owned by 1234:5678\n', 0o640)
    await fs.chown(path.join(root, 'data/owned'), 1234, 5678)
    await write(path.join(root, 'usr/bin/suid'), '#!/bin/sh\necho setuid\n', 0o4755)
    await write(path.join(root, 'data/hl-a'), 'one inode, two names\n')
    await fs.link(path.join(root, 'data/hl-a'), path.join(root, 'data/hl-b'))
    await fs.symlink('../etc/hostname', path.join(root, 'data/link'))
    await run('mknod', ['-m', '0666', path.join(root, 'dev/zero5'), 'c', '1', '5'])
    await write(path.join(root, 'data/xattr-file'), 'with attributes\n')
    await run('setfattr', ['-n', 'user.color', '-v', 'blue', path.join(root, 'data/xattr-file')])
    if (trustedXattr) {
      await run('setfattr', ['-n', 'trusted.wafers', '-v', 'trusted value', path.join(root, 'data/xattr-file')])
    }

    await run('setcap', ['cap_net_raw+ep', path.join(root, 'data/xattr-file')])
    await run('touch', ['-h', '-d', '2019-05-06 07:08:09', ...(await allUnder(root))])
    await run('umoci', ['repack', '--image', image, one])

    // Layer 2.
    const two = path.join(work, 'two')
    await run('umoci', ['unpack', '--image', image, two])
    const root2 = path.join(two, 'rootfs')
    await fs.rm(path.join(root2, 'gone/file1'))
    await fs.rm(path.join(root2, 'gone-too'))
    await fs.rm(path.join(root2, 'gone-dir'), {recursive: true})
    await write(path.join(root2, 'etc/hostname'), 'umoci layer 2\n')
    await write(path.join(root2, 'data/hl2-a'), 'linked in layer 2\n', 0o600)
    await fs.link(path.join(root2, 'data/hl2-a'), path.join(root2, 'data/hl2-b'))
    await write(path.join(root2, 'data/layer2'), 'new in layer 2\n')
    await run('setfattr', ['-n', 'user.layer', '-v', '2', path.join(root2, 'data/layer2')])
    await run('touch', [
      '-d',
      '2020-06-07 08:09:10',
      ...['etc/hostname', 'data/hl2-a', 'data/layer2', 'data', 'gone', 'etc', '.'].map((f) => path.join(root2, f)),
    ])
    await run('umoci', ['repack', '--image', image, two])

    // Layer 3: umoci 0.4.7's `insert --opaque` writes a tar cut short (no padding, no end
    // blocks) that GNU tar and Go both reject, so the opaque layer is a GNU tar added verbatim.
    const source = path.join(work, 'opaque-layer')
    await write(path.join(source, 'opaque/new1'), 'the only file left in opaque\n')
    await write(path.join(source, 'opaque/.wh..wh..opq'), '')
    await run('touch', ['-d', '2021-07-08 09:10:11', ...(await allUnder(source))])
    const tarFile = path.join(work, 'opaque.tar')
    await run('tar', [
      '--create',
      '--format=pax',
      '--numeric-owner',
      '--sort=name',
      '-C',
      source,
      '-f',
      tarFile,
      'opaque',
    ])
    await run('umoci', ['raw', 'add-layer', '--image', image, tarFile])
  } finally {
    await fs.rm(work, {force: true, recursive: true})
  }
}

/**
 * umoci's unpack of the image REF into WORK/bundle; returns its rootfs. An `oci:DIR:TAG` is
 * unpacked as it is, any other (`docker://`, an archive: skopeo's spelling) first copied by skopeo into
 * the OCI layout WORK/layout, every blob as it is.
 */
export async function umociRootfs(ref: string, work: string): Promise<string> {
  await fs.mkdir(work, {recursive: true})
  let image = ref.slice('oci:'.length)
  if (!ref.startsWith('oci:')) {
    image = `${path.join(work, 'layout')}:unpacked`
    await run('skopeo', ['copy', '-q', '--src-tls-verify=false', ref, `oci:${image}`])
  }

  const bundle = path.join(work, 'bundle')
  await run('umoci', ['unpack', '--image', image, bundle])
  return path.join(bundle, 'rootfs')
}

async function allUnder(root: string): Promise<string[]> {
  const entries = await fs.readdir(root, {recursive: true})
  return [root, ...entries.map((entry) => path.join(root, entry))]
}
