import {expect} from 'chai'
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {promises as fs, readdirSync, readFileSync, readlinkSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {gunzipSync} from 'node:zlib'

import {FakeRegistry, type Misbehaviour} from '../helpers/fake-registry.js'
import {blobPath, readLayout, writeLayout} from '../helpers/layout.js'
import {Registry} from '../helpers/registry.js'
import {Sandbox, buildWeb, hasStackTrace, said, snapshot, useSandbox} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'
import {makeUmociImage} from '../helpers/umoci.js'

const sha = (bytes: Buffer | string) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`

/**
 * Writes into the OCI layout `target` (tag `tag`) the image of `source` with every layer
 * gunzipped, then, with `zstd`, compressed again by zstd(1): layers of another compression, the
 * same diff_ids, the config byte for byte, the manifest ending in a newline as umoci writes it.
 */
async function recompressed(source: string, target: string, tag: string, how: 'none' | 'zstd'): Promise<void> {
  const image = await readLayout(source, tag)
  const layers = []
  for (const layer of image.layers) {
    const tar = gunzipSync(await fs.readFile(blobPath(source, layer.digest)))
    layers.push({
      bytes:
        how === 'none' ? tar : Buffer.from((await execa('zstd', ['-q', '-c'], {encoding: 'buffer', input: tar})).stdout),
      mediaType:
        how === 'none' ? 'application/vnd.oci.image.layer.v1.tar' : 'application/vnd.oci.image.layer.v1.tar+zstd',
    })
  }

  await writeLayout(target, tag, {config: image.config, layers, newline: true})
}

/** Processes whose command line or working directory names something under `root`. */
function processesUnder(root: string): string[] {
  const found: string[] = []
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ')
      let cwd = ''
      try {
        cwd = readlinkSync(`/proc/${pid}/cwd`)
      } catch {
        // Gone, or a kernel thread.
      }

      if (argv.includes(root) || cwd.startsWith(root)) found.push(`${pid}: ${argv}`)
    } catch {
      // Gone meanwhile.
    }
  }

  return found
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => {
    setTimeout(resolve, ms)
  })
}

describe('oci transport: exact bytes, every conversion, bounded network work', function () {
  this.timeout(300_000)
  let images: string
  let layout: string
  let expected: string[]
  let box: Sandbox

  before(async function () {
    images = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-transport-'))
    layout = path.join(images, 'umoci')
    await makeUmociImage(layout, 'test')
    const bundle = path.join(images, 'bundle')
    await execa('umoci', ['unpack', '--image', `${layout}:test`, bundle])
    expected = await treeListing(path.join(bundle, 'rootfs'))
  })

  after(async function () {
    await fs.rm(images, {force: true, recursive: true})
  })

  useSandbox((created) => {
    box = created
  })

  /** Pulls `ref` into a fresh store, stacks it, and expects what umoci unpacked from the original image. */
  async function pullMatchesUmoci(ref: string, ...args: string[]): Promise<void> {
    const fresh = await Sandbox.create()
    try {
      const pulled = await fresh.run(['pull', ref, 'image', '--json', ...args])
      expect(pulled.exitCode, `${ref}: ${pulled.stderr}${pulled.stdout}`).to.equal(0)
      expect(JSON.parse(pulled.stdout).layers).to.have.length(3)
      const stacked = await fresh.run(['stack', 'image'])
      expect(stacked.exitCode, stacked.stderr).to.equal(0)
      expect(await treeListing(fresh.stack('image')), ref).to.deep.equal(expected)
      expect(await fs.readdir(path.join(fresh.wafers, '.oci', 'tmp')).catch(() => [])).to.deep.equal([])
    } finally {
      await fresh.cleanup()
    }
  }

  /** Runs `wafers ARGS`, expects a one-sentence refusal matching `pattern` and the store as it was. */
  async function refused(args: string[], pattern: RegExp, env: Record<string, string> = {}): Promise<string> {
    const existed = await fs.stat(box.wafers).then(
      () => true,
      () => false,
    )
    const before = await snapshot(box.wafers)
    const run = await box.run(args, env)
    expect(run.exitCode, run.stdout).to.not.equal(0)
    expect(said(run.stderr), said(run.stderr)).to.match(pattern)
    expect(hasStackTrace(run.stderr)).to.equal(false)
    expect(await fs.readdir(path.join(box.wafers, '.oci', 'tmp')).catch(() => [])).to.deep.equal([])
    const after = await snapshot(box.wafers)
    // A push keeps the layers it packed in its cache (.oci/blobs, .oci/layers), by design.
    const kept = (lines: string[]) => lines.filter((line) => !/^\.oci( |\/blobs|\/layers|\/tmp )/.test(line))
    expect(kept(after)).to.deep.equal(kept(before))
    // A refused pull into a $WAFERS that did not exist leaves none behind.
    if (!existed) expect(await fs.stat(box.wafers).catch(() => undefined)).to.equal(undefined)
    return run.stderr
  }

  describe('fidelity: what skopeo writes, pulled, is what umoci unpacks', function () {
    let registries: Registry[] = []
    const registry = async () => {
      // A registry each: skopeo's blob-info cache would otherwise reuse a blob of another compression.
      const started = await Registry.start()
      registries.push(started)
      return started
    }

    afterEach(async function () {
      await Promise.all(registries.map((one) => one.stop()))
      registries = []
    })

    it('pulls a manifest and config that end in a newline, from a registry and an oci-archive, and builds FROM one', async function () {
      const image = await readLayout(layout, 'test')
      const {config} = image
      // umoci ends both with a newline; skopeo's copies keep it.
      expect(image.manifest.at(-1)).to.equal(0x0a)
      expect(config.at(-1)).to.equal(0x0a)
      const open = await registry()
      await execa('skopeo', [
        'copy',
        '-q',
        '--dest-tls-verify=false',
        `oci:${layout}:test`,
        `docker://${open.host}/u/img:1`,
      ])
      const served = Buffer.from(
        (
          await execa('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${open.host}/u/img:1`], {
            encoding: 'buffer',
            stripFinalNewline: false,
          })
        ).stdout,
      )
      expect(sha(served)).to.equal(sha(image.manifest))
      await pullMatchesUmoci(`${open.host}/u/img:1`, '--tls-verify=false')
      await pullMatchesUmoci(`${open.host}/u/img@${sha(image.manifest)}`, '--tls-verify=false')
      const archive = path.join(images, 'umoci.oci.tar')
      await execa('skopeo', ['copy', '-q', `oci:${layout}:test`, `oci-archive:${archive}:test`])
      await pullMatchesUmoci(`oci-archive:${archive}:test`)

      const context = path.join(box.root, 'context')
      await fs.mkdir(context)
      const {run} = await buildWeb(box, context, `FROM oci-archive:${archive}:test\nENV BUILT=1\n`)
      expect(run.exitCode, run.stderr).to.equal(0)
      expect((await box.run(['stack', 'web'])).exitCode).to.equal(0)
      expect(await treeListing(box.stack('web'))).to.deep.equal(expected)
    })

    it('pulls every conversion skopeo makes: docker-archive, v2s2, zstd, uncompressed layers', async function () {
      const dockerArchive = path.join(images, 'umoci.docker.tar')
      await execa('skopeo', ['copy', '-q', `oci:${layout}:test`, `docker-archive:${dockerArchive}:u/img:1`])
      await pullMatchesUmoci(`docker-archive:${dockerArchive}`)

      const v2s2 = await registry()
      await execa('skopeo', [
        'copy',
        '-q',
        '--format',
        'v2s2',
        '--dest-tls-verify=false',
        `oci:${layout}:test`,
        `docker://${v2s2.host}/u/img:1`,
      ])
      await pullMatchesUmoci(`${v2s2.host}/u/img:1`, '--tls-verify=false')

      // From the uncompressed docker-archive, skopeo compresses with zstd as asked.
      const zstd = await registry()
      await execa('skopeo', [
        'copy',
        '-q',
        '--dest-compress-format',
        'zstd',
        '--dest-tls-verify=false',
        `docker-archive:${dockerArchive}`,
        `docker://${zstd.host}/u/img:1`,
      ])
      const {stdout} = await execa('skopeo', [
        'inspect',
        '--raw',
        '--tls-verify=false',
        `docker://${zstd.host}/u/img:1`,
      ])
      expect(JSON.parse(stdout).layers.map((layer: {mediaType: string}) => layer.mediaType)).to.deep.equal(
        Array.from({length: 3}, () => 'application/vnd.oci.image.layer.v1.tar+zstd'),
      )
      await pullMatchesUmoci(`${zstd.host}/u/img:1`, '--tls-verify=false')

      // skopeo compresses whatever it sends a registry, so the uncompressed layers go up as they are.
      for (const how of ['none', 'zstd'] as const) {
        const plain = path.join(images, `layout-${how}`)
        await recompressed(layout, plain, 'test', how)
        const upload = await registry()
        await upload.pushLayout(plain, 'test', 'u/img')
        await pullMatchesUmoci(`${upload.host}/u/img:test`, '--tls-verify=false')
      }
    })

    it('pulls what wafers pushed to a docker-archive', async function () {
      const first = await box.run(['pull', `oci:${layout}:test`, 'image'])
      expect(first.exitCode, first.stderr).to.equal(0)
      const archive = path.join(images, 'pushed.docker.tar')
      const pushed = await box.run(['push', 'image', `docker-archive:${archive}`])
      expect(pushed.exitCode, pushed.stderr).to.equal(0)
      await pullMatchesUmoci(`docker-archive:${archive}`)
    })

    it("shows skopeo's command line and words with DEBUG=1, and only then", async function () {
      const open = await registry()
      const plain = await refused(
        ['pull', `${open.host}/u/missing:1`, '--tls-verify=false'],
        /repository u\/missing not found on 127\.0\.0\.1:\d+\./,
      )
      expect(plain).to.not.match(/skopeo inspect/)
      const debug = await refused(
        ['pull', `${open.host}/u/missing:1`, '--tls-verify=false'],
        /repository u\/missing not found on 127\.0\.0\.1:\d+\./,
        {DEBUG: '1'},
      )
      expect(debug).to.match(/skopeo inspect --raw --tls-verify=false docker:\/\/127\.0\.0\.1:\d+\/u\/missing:1/)
      expect(debug).to.match(/manifest unknown|name unknown/)
    })
  })

  describe('hostile networks: every wait and every size is bounded', function () {
    let fake: FakeRegistry | undefined

    afterEach(async function () {
      await fake?.stop()
      fake = undefined
    })

    const serve = async (how: Misbehaviour, options: {layer?: number} = {}) => {
      fake = await FakeRegistry.start(layout, 'test', how, options)
      return `${fake.host}/u/img:test`
    }

    it('gives up on a registry that never answers or answers a byte a second, in one sentence', async function () {
      await refused(
        ['pull', await serve('silent'), '--tls-verify=false', '--idle-timeout', '1s'],
        /Error: the registry 127\.0\.0\.1:\d+ moved less than 1 KiB in 1s while reading 127\.0\.0\.1:\d+\/u\/img:test; gave up \(--idle-timeout 1s\)\.\s*$/m,
      )
      await fake!.stop()
      await refused(
        ['pull', await serve('trickle'), '--tls-verify=false', '--idle-timeout', '2s'],
        /the registry 127\.0\.0\.1:\d+ moved less than 1 KiB in 2s while reading .*; gave up \(--idle-timeout 2s\)\./,
      )
      expect(fake!.requests.some((line) => line.includes('/manifests/'))).to.equal(true)
      await refused(
        ['pull', `${fake!.host}/u/img:test`, '--tls-verify=false', '--command-timeout', '2s'],
        /reading 127\.0\.0\.1:\d+\/u\/img:test took longer than 2s; gave up \(--command-timeout 2s\)\./,
      )
      await refused(['pull', `${fake!.host}/u/img:test`, '--idle-timeout', 'soon'], /--idle-timeout takes a duration/)
    })

    it('gives up on a registry that sends a layer too slowly to ever finish, though never idle, in one sentence', async function () {
      await refused(
        ['pull', await serve('drip'), '--tls-verify=false', '--idle-timeout', '4s'],
        /the registry 127\.0\.0\.1:\d+ moved only \d+ bytes in 4s while downloading 127\.0\.0\.1:\d+\/u\/img:test, slower than the 1 KiB a second wafers waits for; gave up \(--idle-timeout 4s is how long it measures\)\./,
      )
      expect(fake!.requests.some((line) => /GET .*\/blobs\//.test(line))).to.equal(true)
    })

    it('cuts off an endless layer at its size and an endless manifest, leaving nothing in the store', async function () {
      const image = await readLayout(layout, 'test')
      const largest = image.layers.reduce((best, layer, i) => (layer.size > image.layers[best].size ? i : best), 0)
      await box.wafer('keep', {files: {'etc/keep': 'keep\n'}})
      const digest = image.layers[largest].digest.replace(':', '\\:')
      await refused(
        ['pull', await serve('endless', {layer: largest}), '--tls-verify=false'],
        new RegExp(
          `layer ${largest + 1} of 3 \\(${digest}\\) of .* is larger than its descriptor says \\(the registry 127\\.0\\.0\\.1:\\d+ sent more than ${image.layers[largest].size} bytes\\); gave up\\.`,
        ),
      )
      await fake!.stop()
      await refused(
        ['pull', await serve('huge-manifest'), '--tls-verify=false'],
        /the registry 127\.0\.0\.1:\d+ sent more than 4 MiB for the manifest or config of 127\.0\.0\.1:\d+\/u\/img:test, the most skopeo reads; gave up\./,
      )
    })

    it('names the layer that does not match its digest, and both digests', async function () {
      const image = await readLayout(layout, 'test')
      const digest = image.layers[1].digest
      const stderr = await refused(
        ['pull', await serve('corrupt', {layer: 1}), '--tls-verify=false'],
        new RegExp(
          `layer 2 of 3 \\(${digest}\\) of 127\\.0\\.0\\.1:\\d+/u/img:test does not match its digest: the manifest says ${digest}, the registry 127\\.0\\.0\\.1:\\d+ sent sha256:[0-9a-f]{64}\\.`,
        ),
      )
      expect(stderr).to.not.match(/skopeo could not/)
    })

    it('gives up on a push destination that never answers', async function () {
      await box.wafer('mine', {files: {'etc/mine': 'mine\n'}})
      await refused(
        [
          'push',
          'mine',
          `${(await serve('silent')).replace(':test', ':1')}`,
          '--tls-verify=false',
          '--idle-timeout',
          '1s',
        ],
        /the registry 127\.0\.0\.1:\d+ moved less than 1 KiB in 1s while pushing to 127\.0\.0\.1:\d+\/u\/img:1; gave up \(--idle-timeout 1s\)\./,
      )
    })

    it('refuses a FIFO or device as an archive, in a pull, in FROM and as a push destination, without opening it', async function () {
      const fifo = path.join(box.root, 'image.tar')
      await execa('mkfifo', [fifo])
      await refused(
        ['pull', `oci-archive:${fifo}`],
        /image\.tar is a FIFO, not a regular file; wafers reads and writes archives only as regular files\./,
      )
      await refused(['pull', `docker-archive:${fifo}`], /image\.tar is a FIFO, not a regular file/)
      await refused(['pull', 'docker-archive:/dev/zero'], /\/dev\/zero is a device, not a regular file/)
      const context = path.join(box.root, 'context')
      await fs.mkdir(context)
      await fs.writeFile(path.join(context, 'Containerfile'), `FROM oci-archive:${fifo}\n`)
      await refused(['build', '-t', 'web', context], /image\.tar is a FIFO, not a regular file/)
      await box.wafer('mine', {files: {'etc/mine': 'mine\n'}})
      await refused(['push', 'mine', `docker-archive:${fifo}`], /image\.tar is a FIFO, not a regular file/)
    })

    it('removes the $WAFERS a refused pull made, and nothing else, however late it is refused', async function () {
      // The config's first diffID is wrong: the refusal comes while layer 1 is unpacked.
      const bad = path.join(box.root, 'bad')
      await fs.cp(layout, bad, {recursive: true})
      const index = JSON.parse(await fs.readFile(path.join(bad, 'index.json'), 'utf8'))
      const blob = (digest: string) => path.join(bad, 'blobs', 'sha256', digest.slice(7))
      const manifest = JSON.parse(await fs.readFile(blob(index.manifests[0].digest), 'utf8'))
      const config = JSON.parse(await fs.readFile(blob(manifest.config.digest), 'utf8'))
      config.rootfs.diff_ids[0] = `sha256:${'1'.repeat(64)}`
      const configBytes = JSON.stringify(config)
      manifest.config = {...manifest.config, digest: sha(configBytes), size: Buffer.byteLength(configBytes)}
      await fs.writeFile(blob(manifest.config.digest), configBytes)
      const manifestBytes = JSON.stringify(manifest)
      index.manifests[0] = {...index.manifests[0], digest: sha(manifestBytes), size: Buffer.byteLength(manifestBytes)}
      await fs.writeFile(blob(index.manifests[0].digest), manifestBytes)
      await fs.writeFile(path.join(bad, 'index.json'), JSON.stringify(index))
      const archive = path.join(box.root, 'bad.tar')
      await execa('skopeo', ['copy', '-q', `oci:${bad}:test`, `oci-archive:${archive}:test`])
      const besides = await fs.readdir(box.root)
      fake = await FakeRegistry.start(bad, 'test', 'honest')
      for (const ref of [`oci:${bad}:test`, `oci-archive:${archive}:test`, `${fake.host}/u/bad:test`]) {
        await refused(
          ['pull', ref, 'x', '--tls-verify=false'],
          /layer 1 \(sha256:[0-9a-f]{64}\) of .* does not match its diffID sha256:1{64}/,
        )
        expect(await fs.readdir(box.root)).to.deep.equal(besides)
      }
    })

    it('refuses an image with more layers than a stack can hold before unpacking any', async function () {
      const deep = path.join(box.root, 'deep')
      const root = path.join(box.root, 'one-file')
      await fs.mkdir(root)
      await fs.writeFile(path.join(root, 'f'), 'f\n')
      const tar = Buffer.from((await execa('tar', ['-C', root, '-cf', '-', 'f'], {encoding: 'buffer'})).stdout)
      const layer = {digest: sha(tar)}
      const count = 501
      await writeLayout(deep, 'test', {
        diffIds: Array.from({length: count}, () => sha(tar)),
        layers: Array.from({length: count}, () => ({bytes: tar, mediaType: 'application/vnd.oci.image.layer.v1.tar'})),
      })
      await refused(['pull', `oci:${deep}:test`], /has 501 layers, more than the 500 a stack can hold/)
      fake = await FakeRegistry.start(deep, 'test', 'honest')
      await refused(
        ['pull', `${fake.host}/u/deep:test`, '--tls-verify=false'],
        /127\.0\.0\.1:\d+\/u\/deep:test has 501 layers, more than the 500 a stack can hold/,
      )
      expect(fake.requests.some((line) => line.includes('/blobs/sha256:' + layer.digest.slice(7)))).to.equal(false)
    })

    it('leaves no skopeo behind when wafers is killed with -9 mid-download, and the next pull works', async function () {
      const ref = await serve('slow-blob')
      const child = execa(process.execPath, [path.resolve('bin/run.js'), 'pull', ref, 'image', '--tls-verify=false'], {
        env: box.env,
        reject: false,
        stdin: 'ignore',
      })
      const tmp = path.join(box.wafers, '.oci', 'tmp')
      const downloading = async () => {
        for (const work of await fs.readdir(tmp).catch(() => [] as string[])) {
          const dir = path.join(tmp, work, 'layout')
          for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
            const stat = await fs.stat(path.join(dir, name)).catch(() => undefined)
            if (name.startsWith('oci-put-blob') && stat && stat.size > 0) return true
          }
        }

        return false
      }

      for (let i = 0; i < 300 && !(await downloading()); i++) {
        await sleep(100)
      }

      expect(await downloading(), 'the download began').to.equal(true)
      expect(processesUnder(box.root).some((line) => line.includes('skopeo'))).to.equal(true)
      child.kill('SIGKILL')
      await child
      let left = processesUnder(box.root)
      for (let i = 0; i < 50 && left.length > 0; i++) {
        await sleep(100)
        left = processesUnder(box.root)
      }

      expect(left).to.deep.equal([])
      await fake!.stop()
      fake = await FakeRegistry.start(layout, 'test', 'honest')
      const again = await box.run(['pull', `${fake.host}/u/img:test`, 'image', '--tls-verify=false'])
      expect(again.exitCode, again.stderr).to.equal(0)
      expect((await box.run(['stack', 'image'])).exitCode).to.equal(0)
      expect(await treeListing(box.stack('image'))).to.deep.equal(expected)
    })
  })
})
