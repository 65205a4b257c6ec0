import {expect} from 'chai'
import {execa} from 'execa'
import path from 'node:path'

/** Where a containers tool (buildah, podman) keeps its images: WORK/root and WORK/runroot, by DRIVER. */
export function storageFlags(work: string, driver: 'overlay' | 'vfs' = 'vfs'): string[] {
  return ['--root', path.join(work, 'root'), '--runroot', path.join(work, 'runroot'), '--storage-driver', driver]
}

/**
 * `buildah ARGS` on storage of its own under `work` (vfs: it runs anywhere, as root, with no
 * daemon); fails the test with buildah's words when buildah fails. Returns its stdout.
 */
export async function buildah(work: string, ...args: string[]): Promise<string> {
  return buildahOn(work, 'vfs', ...args)
}

/** `buildah ARGS` as buildah() runs it, on storage of the given driver. */
export async function buildahOn(work: string, driver: 'overlay' | 'vfs', ...args: string[]): Promise<string> {
  const run = await execa('buildah', [...storageFlags(work, driver), ...args], {reject: false, stdin: 'ignore'})
  expect(run.exitCode, `buildah ${args.join(' ')}\n${run.stdout}\n${run.stderr}`).to.equal(0)
  return run.stdout
}

/**
 * `buildah bud --isolation chroot` of CONTEXT (its Containerfile) into the OCI layout WORK/out,
 * unpacked by umoci into WORK/bundle: the reference tree and config a wafers build is compared with.
 * buildah's oci: transport wants a lower-case path, so WORK must be one. Returns the bundle.
 */
export async function budIntoBundle(work: string, context: string): Promise<string> {
  const out = path.join(work, 'out')
  await buildah(
    work,
    'bud',
    '--isolation',
    'chroot',
    '-t',
    `oci:${out}:built`,
    '-f',
    path.join(context, 'Containerfile'),
    context,
  )
  const bundle = path.join(work, 'bundle')
  await execa('umoci', ['unpack', '--image', `${out}:built`, bundle])
  return bundle
}

/**
 * Runs `use` on the root file system of a buildah container made from the registry image REF
 * (`buildah from` and `buildah mount`, vfs storage under WORK), then removes the container.
 */
export async function inBuildahContainer<T>(work: string, ref: string, use: (root: string) => Promise<T>): Promise<T> {
  const container = (await buildah(work, 'from', '--quiet', '--tls-verify=false', ref)).trim()
  try {
    return await use((await buildah(work, 'mount', container)).trim())
  } finally {
    await execa('buildah', [...storageFlags(work), 'rm', container], {reject: false, stdin: 'ignore'})
  }
}
