import {expect} from 'chai'
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {closedPort} from '../helpers/net.js'
import {Registry} from '../helpers/registry.js'
import {hasStackTrace, said, Sandbox, snapshot, useSandbox} from '../helpers/sandbox.js'

const sha = (bytes: Buffer | string) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

async function blob(layout: string, bytes: Buffer | string): Promise<{digest: string; size: number}> {
  const digest = sha(bytes)
  await fs.mkdir(path.join(layout, 'blobs', 'sha256'), {recursive: true})
  await fs.writeFile(path.join(layout, 'blobs', 'sha256', digest.slice(7)), bytes)
  return {digest, size: Buffer.byteLength(bytes)}
}

/**
 * Writes an OCI layout at `layout` with one small image for `architecture`, tagged `tag`; with
 * `index`, the tag names an image index that lists only that image (a one-platform multi-arch image).
 */
async function makeLayout(layout: string, architecture: string, options: {index?: boolean} = {}): Promise<void> {
  const root = `${layout}-root`
  await fs.mkdir(path.join(root, 'etc'), {recursive: true})
  await fs.writeFile(path.join(root, 'etc', 'greeting'), `hello from ${architecture}\n`)
  const tar = Buffer.from(
    (await execa('tar', ['-C', root, '--numeric-owner', '-cf', '-', '.'], {encoding: 'buffer'})).stdout,
  )
  const {gzipSync} = await import('node:zlib')
  const gz = gzipSync(tar)
  const layer = await blob(layout, gz)
  const config = await blob(
    layout,
    JSON.stringify({architecture, config: {}, os: 'linux', rootfs: {diff_ids: [sha(tar)], type: 'layers'}}),
  )
  const manifest = await blob(
    layout,
    JSON.stringify({
      config: {...config, mediaType: 'application/vnd.oci.image.config.v1+json'},
      layers: [{...layer, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip'}],
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      schemaVersion: 2,
    }),
  )
  let top = {...manifest, mediaType: 'application/vnd.oci.image.manifest.v1+json'}
  if (options.index) {
    const index = await blob(
      layout,
      JSON.stringify({
        manifests: [{...top, platform: {architecture, os: 'linux'}}],
        mediaType: 'application/vnd.oci.image.index.v1+json',
        schemaVersion: 2,
      }),
    )
    top = {...index, mediaType: 'application/vnd.oci.image.index.v1+json'}
  }

  await fs.writeFile(path.join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}')
  await fs.writeFile(
    path.join(layout, 'index.json'),
    JSON.stringify({manifests: [{...top, annotations: {'org.opencontainers.image.ref.name': 'v1'}}], schemaVersion: 2}),
  )
}

const other = process.arch === 'arm64' ? 'amd64' : 'arm64'
const host = process.arch === 'arm64' ? 'arm64' : 'amd64'

describe('oci: registry logins and errors, one sentence each and nothing made', function () {
  this.timeout(300_000)
  let open: Registry
  let locked: Registry
  let box: Sandbox

  before(async function () {
    ;[open, locked] = await Promise.all([Registry.start(), Registry.start({users: {wafers: 'sesame'}})])
  })

  after(async function () {
    await Promise.all([open?.stop(), locked?.stop()])
  })

  useSandbox((created) => {
    box = created
  })

  /** Runs `wafers ARGS`, expects a one-sentence refusal matching `pattern`, and the store unchanged. */
  async function refused(args: string[], pattern: RegExp): Promise<void> {
    const before = await snapshot(box.wafers)
    const run = await box.run(args)
    expect(run.exitCode, run.stdout).to.not.equal(0)
    expect(said(run.stderr)).to.match(pattern)
    expect(hasStackTrace(run.stderr)).to.equal(false)
    expect((await snapshot(box.wafers)).filter((line) => !line.startsWith('.oci'))).to.deep.equal(
      before.filter((line) => !line.startsWith('.oci')),
    )
    expect(await fs.readdir(path.join(box.wafers, '.oci', 'tmp')).catch(() => [])).to.deep.equal([])
  }

  it('--creds and --authfile log in; wrong or missing credentials are refused in one sentence', async function () {
    const layout = path.join(box.root, 'image')
    await makeLayout(layout, host)
    await fs.mkdir(box.wafers)
    const ref = `${locked.host}/wafers/hello:1`
    await refused(['pull', `oci:${layout}:v1`, 'x', '--creds', 'nocolon'], /--creds takes USER:PASS/)
    await execa('skopeo', [
      'copy',
      '--dest-tls-verify=false',
      '--dest-creds',
      'wafers:sesame',
      `oci:${layout}:v1`,
      `docker://${ref}`,
    ])
    await refused(
      ['pull', ref, 'again', '--tls-verify=false', '--creds', 'wafers:wrong'],
      /refused the credentials for .* \(401 unauthorized\)/,
    )
    await refused(['pull', ref, 'again', '--tls-verify=false'], /wants credentials for .* \(401 unauthorized\)/)
    const pulled = await box.run(['pull', ref, 'again', '--tls-verify=false', '--creds', 'wafers:sesame', '--json'])
    expect(pulled.exitCode, pulled.stderr).to.equal(0)
    expect(JSON.parse(pulled.stdout).name).to.equal('again')

    const authfile = path.join(box.root, 'auth.json')
    await fs.writeFile(
      authfile,
      JSON.stringify({auths: {[locked.host]: {auth: Buffer.from('wafers:sesame').toString('base64')}}}),
    )
    const viaFile = await box.run(['pull', ref, 'third', '--tls-verify=false', '--authfile', authfile])
    expect(viaFile.exitCode, viaFile.stderr).to.equal(0)
    const layer = JSON.parse(pulled.stdout).layers[0].wafer as string
    expect(await fs.readFile(box.data(layer, 'etc', 'greeting'), 'utf8')).to.equal(`hello from ${host}\n`)

    // And push: a stack on the pulled image, with the right and wrong credentials.
    await box.wafer('mine', {files: {'etc/mine': 'mine\n'}, parent: 'again'})
    const pushed = await box.run([
      'push',
      'mine',
      `${locked.host}/wafers/mine:1`,
      '--tls-verify=false',
      '--creds',
      'wafers:sesame',
    ])
    expect(pushed.exitCode, pushed.stderr).to.equal(0)
    const wrong = await box.run([
      'push',
      'mine',
      `${locked.host}/wafers/mine:2`,
      '--tls-verify=false',
      '--creds',
      'wafers:wrong',
    ])
    expect(wrong.exitCode).to.equal(1)
    expect(said(wrong.stderr)).to.match(
      /registry 127\.0\.0\.1:\d+ refused the credentials for .*\(401 unauthorized\)\./,
    )
    expect(hasStackTrace(wrong.stderr)).to.equal(false)
  })

  it('refuses an unreachable registry, a missing repository, a missing tag and plain HTTP without --tls-verify=false', async function () {
    const layout = path.join(box.root, 'image')
    await makeLayout(layout, host)
    await execa('skopeo', [
      'copy',
      '--dest-tls-verify=false',
      `oci:${layout}:v1`,
      `docker://${open.host}/wafers/hello:1`,
    ])
    await fs.mkdir(box.wafers)
    await box.wafer('keep', {files: {'etc/keep': 'keep\n'}})
    const port = await closedPort()
    await refused(
      ['pull', `127.0.0.1:${port}/wafers/hello:1`, '--tls-verify=false'],
      /Error: cannot reach the registry 127\.0\.0\.1:\d+: connection refused\./,
    )
    await refused(
      ['pull', `${open.host}/wafers/nothing:1`, '--tls-verify=false'],
      /repository wafers\/nothing not found on 127\.0\.0\.1:\d+\./,
    )
    await refused(
      ['pull', `${open.host}/wafers/hello:2`, '--tls-verify=false'],
      /tag 2 not found in 127\.0\.0\.1:\d+\/wafers\/hello\./,
    )
    await refused(['pull', `${open.host}/wafers/hello:1`], /speaks plain HTTP, not HTTPS/)
    await refused(
      ['push', 'keep', `127.0.0.1:${port}/wafers/keep:1`, '--tls-verify=false'],
      /cannot reach the registry 127\.0\.0\.1:\d+: connection refused\./,
    )
    await refused(['pull', `oci:${path.join(box.root, 'nowhere')}`], /is not an OCI image layout/)
    // Numbers and words in the names are not the registry's answer: a missing tag v401 is a missing tag.
    await refused(
      ['pull', `${open.host}/wafers/hello:v401`, '--tls-verify=false'],
      /tag v401 not found in 127\.0\.0\.1:\d+\/wafers\/hello\./,
    )
    await refused(
      ['pull', `${open.host}/unauthorized/denied403:v404`, '--tls-verify=false'],
      /repository unauthorized\/denied403 not found on 127\.0\.0\.1:\d+\./,
    )
    // A file that is no archive: one sentence of ours, none of skopeo's text.
    const notArchive = await box.run(['pull', 'docker-archive:/etc/passwd', 'x'])
    expect(notArchive.exitCode).to.equal(1)
    expect(said(notArchive.stderr)).to.match(/Error: docker-archive:\/etc\/passwd is not a Docker archive\.\s*$/)
    expect(notArchive.stderr).to.not.match(/tar|skopeo|parsing/i)
  })

  it('refuses an image for another architecture, from a registry index and from a layout', async function () {
    const layout = path.join(box.root, 'foreign')
    await makeLayout(layout, other, {index: true})
    await execa('skopeo', [
      'copy',
      '--all',
      '--dest-tls-verify=false',
      `oci:${layout}:v1`,
      `docker://${open.host}/wafers/foreign:1`,
    ])
    const single = path.join(box.root, 'single')
    await makeLayout(single, other)
    await fs.mkdir(box.wafers)
    await refused(
      ['pull', `${open.host}/wafers/foreign:1`, '--tls-verify=false'],
      new RegExp(`has no image for linux/${host}, this machine's platform; it has linux/${other}\\.`),
    )
    await refused(
      ['pull', `oci:${layout}:v1`],
      new RegExp(`has no image for linux/${host}, this machine's platform; it has linux/${other}\\.`),
    )
    await refused(['pull', `oci:${single}:v1`], new RegExp(`is for linux/${other}, not for linux/${host}`))
  })
})
