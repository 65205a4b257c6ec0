import {expect} from 'chai'
import {execa} from 'execa'
import path from 'node:path'

/**
 * `buildah ARGS` on storage of its own under `work` (vfs: it runs anywhere, as root, with no
 * daemon); fails the test with buildah's words when buildah fails. Returns its stdout.
 */
export async function buildah(work: string, ...args: string[]): Promise<string> {
  const storage = [
    '--root',
    path.join(work, 'root'),
    '--runroot',
    path.join(work, 'runroot'),
    '--storage-driver',
    'vfs',
  ]
  const run = await execa('buildah', [...storage, ...args], {reject: false, stdin: 'ignore'})
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
