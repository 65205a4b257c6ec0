import {createHash} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {gzipSync} from 'node:zlib'

export interface Descriptor {
  digest: string
  mediaType: string
  size: number
}

/** The image tagged `tag` in an OCI layout, read plainly: its manifest as bytes and as JSON, its config's bytes. */
export interface LayoutImage {
  config: Buffer
  configDescriptor: Descriptor
  layers: Descriptor[]
  manifest: Buffer
  manifestDescriptor: Descriptor
}

export const sha256 = (bytes: Buffer | string): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

/** The file of blob `digest` in the layout `dir`. */
export function blobPath(dir: string, digest: string): string {
  return path.join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length))
}

/** The image tagged `tag` in the OCI layout `dir` (the only image when `tag` is not given). */
export async function readLayout(dir: string, tag?: string): Promise<LayoutImage> {
  const index = JSON.parse(await fs.readFile(path.join(dir, 'index.json'), 'utf8')) as {
    manifests: Array<Descriptor & {annotations?: Record<string, string>}>
  }
  const top =
    tag === undefined
      ? index.manifests[0]
      : index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)
  if (!top) throw new Error(`no tag ${tag} in ${dir}`)
  const manifest = await fs.readFile(blobPath(dir, top.digest))
  const parsed = JSON.parse(manifest.toString()) as {config: Descriptor; layers: Descriptor[]}
  return {
    config: await fs.readFile(blobPath(dir, parsed.config.digest)),
    configDescriptor: parsed.config,
    layers: parsed.layers,
    manifest,
    manifestDescriptor: {digest: top.digest, mediaType: top.mediaType, size: top.size},
  }
}

/** The platform this machine pulls, as an image config names it. */
export const ARCHITECTURE = process.arch === 'arm64' ? 'arm64' : 'amd64'

/**
 * Writes, by hand, the OCI layout `dir` holding one image tagged `tag`: `layers` byte for byte, a
 * config (`config` bytes as they are, or by default one for this machine listing `diffIds`) and a
 * manifest, each ending in a newline when `newline` says so (as umoci writes them), so an image
 * reaches wafers exactly as a registry would serve it. Returns the manifest's descriptor.
 */
export async function writeLayout(
  dir: string,
  tag: string,
  image: {config?: Buffer; diffIds?: string[]; layers: Array<{bytes: Buffer; mediaType: string}>; newline?: boolean},
): Promise<Descriptor> {
  await fs.mkdir(path.join(dir, 'blobs', 'sha256'), {recursive: true})
  const end = image.newline ? '\n' : ''
  const put = async (bytes: Buffer, mediaType: string): Promise<Descriptor> => {
    const digest = sha256(bytes)
    await fs.writeFile(blobPath(dir, digest), bytes)
    return {digest, mediaType, size: bytes.length}
  }

  const config =
    image.config ??
    Buffer.from(
      JSON.stringify({
        architecture: ARCHITECTURE,
        config: {},
        os: 'linux',
        rootfs: {diff_ids: image.diffIds ?? [], type: 'layers'},
      }) + end,
    )
  const layers = []
  for (const layer of image.layers) layers.push(await put(layer.bytes, layer.mediaType))
  const manifest = await put(
    Buffer.from(
      JSON.stringify({
        config: await put(config, 'application/vnd.oci.image.config.v1+json'),
        layers,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        schemaVersion: 2,
      }) + end,
    ),
    'application/vnd.oci.image.manifest.v1+json',
  )
  await fs.writeFile(path.join(dir, 'oci-layout'), JSON.stringify({imageLayoutVersion: '1.0.0'}))
  await fs.writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({
      manifests: [{...manifest, annotations: {'org.opencontainers.image.ref.name': tag}}],
      schemaVersion: 2,
    }),
  )
  return manifest
}

/** writeLayout of uncompressed `tars`, gzipped, with a config listing their diffIDs. */
export async function writeLayoutOfTars(
  dir: string,
  tag: string,
  tars: Buffer[],
  options: {newline?: boolean} = {},
): Promise<Descriptor> {
  return writeLayout(dir, tag, {
    diffIds: tars.map((tar) => sha256(tar)),
    layers: tars.map((tar) => ({bytes: gzipSync(tar), mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip'})),
    newline: options.newline,
  })
}
