import {expect} from 'chai'
import {execa} from 'execa'

import {storageFlags} from './buildah.js'

/** `podman ARGS` on vfs storage of its own under `work`; fails the test with podman's words when it fails. */
export async function podman(work: string, ...args: string[]): Promise<string> {
  const run = await execa('podman', [...storageFlags(work), ...args], {reject: false, stdin: 'ignore'})
  expect(run.exitCode, `podman ${args.join(' ')}\n${run.stdout}\n${run.stderr}`).to.equal(0)
  return run.stdout
}

/**
 * Runs `use` on the root file system podman makes of the image REF (`podman pull`, then `podman
 * image mount`, on vfs storage under WORK: podman's own unpacking of every layer), then unmounts it.
 * `podman run` does not work here; a mount shows what a container would.
 */
export async function inPodmanImage<T>(work: string, ref: string, use: (root: string) => Promise<T>): Promise<T> {
  const id = (await podman(work, 'pull', '--quiet', '--tls-verify=false', ref)).trim()
  try {
    return await use((await podman(work, 'image', 'mount', id)).trim())
  } finally {
    await execa('podman', [...storageFlags(work), 'image', 'unmount', id], {reject: false, stdin: 'ignore'})
  }
}
