import {expect} from 'chai'
import {execa} from 'execa'
import {existsSync, promises as fs} from 'node:fs'
import path from 'node:path'

import {treeListing} from './tree.js'

/**
 * A Debian sid root with systemd 262 (systemd-mstack, systemd-nspawn, systemd-pull), made once by
 * debootstrap from the host's mirror and kept in a cache, as the debootstrap tests keep theirs.
 * The host's own systemd (Debian 12: 252) knows nothing of .mstack.
 */
export const SID_ROOT = '/var/cache/wafers-test/sid-systemd'

/** Makes SID_ROOT if missing (a few minutes, once per machine). */
export async function ensureSidRoot(): Promise<string> {
  if (existsSync(path.join(SID_ROOT, 'usr/bin/systemd-mstack'))) return SID_ROOT
  const partial = `${SID_ROOT}.partial`
  await fs.rm(partial, {force: true, recursive: true})
  await fs.mkdir(path.dirname(SID_ROOT), {recursive: true})
  await execa(
    'debootstrap',
    ['--variant=minbase', '--include=systemd,systemd-container', 'sid', partial, 'http://deb.debian.org/debian'],
    {stdio: 'ignore'},
  )
  await fs.rename(partial, SID_ROOT)
  return SID_ROOT
}

/**
 * Makes SID_ROOT usable as a chroot in this (private) mount namespace: the root a mount point of
 * its own (systemd-mstack remounts it), /proc, /sys and /dev inside, and each of `shared` (the
 * test's temp dirs) at the same path inside, so absolute links in the store resolve alike.
 * Undone by the sandbox's cleanup and the namespace's end; returns a function that undoes it now.
 */
export async function enterableSid(shared: string[]): Promise<() => Promise<void>> {
  const root = await ensureSidRoot()
  const mounted: string[] = []
  const bind = async (from: string, to: string, recursive = false) => {
    await fs.mkdir(to, {recursive: true})
    await execa('mount', [recursive ? '--rbind' : '--bind', from, to])
    mounted.push(to)
  }

  await bind(root, root)
  for (const dir of ['proc', 'sys', 'dev']) await bind(`/${dir}`, path.join(root, dir), true)
  // systemd 262's nspawn refuses the host's legacy cgroup v1 tree: show it the unified one.
  await execa('mount', ['-t', 'cgroup2', 'cgroup2', path.join(root, 'sys/fs/cgroup')])
  mounted.push(path.join(root, 'sys/fs/cgroup'))
  for (const dir of shared) await bind(dir, path.join(root, dir))
  return async () => {
    for (const target of mounted.reverse()) await execa('umount', ['-l', target], {reject: false})
  }
}

/**
 * Makes SID_ROOT able to run /usr/lib/systemd/systemd-pull: it dlopen()s libcurl, which
 * systemd-container only suggests, so debootstrap leaves it out. Installed once into the cached
 * root from the mirror it was made from (apt-get in the chroot); a few seconds.
 */
export async function ensureSidPull(): Promise<void> {
  await ensureSidRoot()
  const status = await execa('chroot', [SID_ROOT, 'dpkg-query', '-W', '-f=${Status}', 'libcurl4t64'], {reject: false})
  if (status.stdout === 'install ok installed') return
  await execa('chroot', [SID_ROOT, 'apt-get', 'install', '-y', '--no-install-recommends', 'libcurl4t64'], {
    env: {DEBIAN_FRONTEND: 'noninteractive'},
    stdin: 'ignore',
  })
}

/**
 * Makes programs in the sid root (libcurl's OpenSSL) trust `certificate` (PEM) alone, in this mount
 * namespace only: a directory of ours bound over its /etc/ssl, whose certs/ca-certificates.crt is
 * where Debian's libcurl looks. Returns a function that undoes it now.
 */
export async function trustInSid(certificate: string, scratch: string): Promise<() => Promise<void>> {
  const ssl = path.join(scratch, 'sid-ssl')
  await fs.mkdir(path.join(ssl, 'certs'), {recursive: true})
  await fs.writeFile(path.join(ssl, 'certs', 'ca-certificates.crt'), certificate)
  const target = path.join(SID_ROOT, 'etc', 'ssl')
  await fs.mkdir(target, {recursive: true})
  await execa('mount', ['--bind', ssl, target])
  return async () => {
    await execa('umount', ['-l', target], {reject: false})
  }
}

/** Runs `command` in the sid root. */
export async function inSid(
  command: string[],
  env: Record<string, string> = {},
): Promise<{exitCode: number; stderr: string; stdout: string}> {
  // A machine that waits for input would hang the test: nothing here runs for minutes.
  const run = await execa('chroot', [SID_ROOT, ...command], {env, reject: false, stdin: 'ignore', timeout: 120_000})
  return {exitCode: run.exitCode ?? -1, stderr: String(run.stderr), stdout: String(run.stdout)}
}

/** Runs `script` (sh -c) in a machine that systemd 262's nspawn boots on the `.mstack` at `mstack`. */
export async function inSidMachine(mstack: string, script: string): ReturnType<typeof inSid> {
  return inSid(['systemd-nspawn', '--register=no', '--keep-unit', '--quiet', `--mstack=${mstack}`, 'sh', '-c', script])
}

/** The tree systemd-mstack mounts from `mstack` at a directory in `root`, listed, and unmounted again. */
export async function mountedBySystemd(root: string, mstack: string): Promise<string[]> {
  const at = path.join(root, 'by-systemd')
  await fs.mkdir(at, {recursive: true})
  const mounted = await inSid(['systemd-mstack', '--mount', mstack, at])
  expect(mounted.exitCode, mounted.stderr).to.equal(0)
  try {
    return await treeListing(path.join(SID_ROOT, at))
  } finally {
    await inSid(['systemd-mstack', '--umount', at])
  }
}
