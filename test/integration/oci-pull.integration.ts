import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {hasStackTrace, said, Sandbox, useSandbox} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'
import {UMOCI_IMAGE_FEATURES, makeUmociImage} from '../helpers/umoci.js'

interface Layer {
  digest: string
  made: boolean
  wafer: string
}

interface Pulled {
  digest: string
  layers: Layer[]
  made: boolean
  name: string
}

describe('oci: pull from OCI layouts', function () {
  this.timeout(300_000)
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  it('pulls a umoci-built image that, stacked, equals umoci unpack of it, file for file', async function () {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    const run = await box.run(['pull', `oci:${layout}:test`, 'image', '--json'])
    expect(run.exitCode, run.stderr).to.equal(0)
    const pulled = JSON.parse(run.stdout) as Pulled
    expect(pulled.layers).to.have.length(3)
    expect(pulled.layers.every((layer) => layer.made && /^layer-[\da-f]{32}$/.test(layer.wafer))).to.equal(true)
    expect(await fs.readFile(path.join(box.wafers, pulled.layers[1].wafer, 'parent'), 'utf8')).to.equal(
      `${pulled.layers[0].wafer}\n`,
    )
    expect(await fs.readdir(box.data('image'))).to.deep.equal([])
    const meta = JSON.parse(await fs.readFile(path.join(box.wafers, 'image', 'meta.json'), 'utf8'))
    expect(meta.image).to.include({digest: pulled.digest, ref: `oci:${layout}:test`})

    expect((await box.run(['stack', 'image'])).exitCode).to.equal(0)
    const bundle = path.join(box.root, 'bundle')
    await execa('umoci', ['unpack', '--image', `${layout}:test`, bundle])
    const ours = await treeListing(box.stack('image'))
    expect(ours).to.deep.equal(await treeListing(path.join(bundle, 'rootfs')))
    for (const file of [UMOCI_IMAGE_FEATURES.setuid, UMOCI_IMAGE_FEATURES.owned, UMOCI_IMAGE_FEATURES.xattrs]) {
      expect(ours.some((line) => line.startsWith(`${file} `))).to.equal(true)
    }

    for (const gone of UMOCI_IMAGE_FEATURES.deleted)
      expect(ours.some((line) => line.startsWith(`${gone} `))).to.equal(false)

    // Pulled again into the same name: up to date, nothing made; into another name: only the top is new.
    const again = await box.run(['pull', `oci:${layout}:test`, 'image', '--json'])
    expect(JSON.parse(again.stdout)).to.include({made: false})
    const twin = JSON.parse((await box.run(['pull', `oci:${layout}:test`, 'twin', '--json'])).stdout) as Pulled
    expect(twin.made).to.equal(true)
    expect(twin.layers.map((layer) => layer.made)).to.deep.equal([false, false, false])
  })

  it('refuses to pull into a wafer that holds something else, changing nothing', async function () {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    await box.wafer('image', {files: {'etc/mine': 'mine\n'}})
    const run = await box.run(['pull', `oci:${layout}:test`, 'image'])
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.match(/wafer image already exists and holds a wafer not pulled from an image, not oci:/)
    expect(hasStackTrace(run.stderr)).to.equal(false)
    expect((await fs.readdir(box.wafers)).filter((name) => name !== '.oci')).to.deep.equal(['image'])
  })

  it('list and tree (and --json) say which wafers are image layers and which image a top came from', async function () {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    const pulled = JSON.parse((await box.run(['pull', `oci:${layout}:test`, 'image', '--json'])).stdout) as Pulled
    await box.wafer('mine', {parent: 'image'})
    const list = JSON.parse((await box.run(['list', '--json'])).stdout) as Array<{
      image?: {digest: string; ref: string}
      layer?: string
      name: string
    }>
    const byName = new Map(list.map((wafer) => [wafer.name, wafer]))
    expect(byName.get('image')?.image).to.include({digest: pulled.digest, ref: `oci:${layout}:test`})
    for (const layer of pulled.layers) expect(byName.get(layer.wafer)?.layer).to.match(/^sha256:[\da-f]{64}$/)
    expect(byName.get('mine')).to.not.have.property('image')
    expect(byName.get('mine')).to.not.have.property('layer')

    const table = (await box.run(['list', '--no-size'])).stdout
    expect(table).to.match(new RegExp(`^image .*from oci:${layout}:test$`, 'm'))
    expect(table).to.match(new RegExp(`^${pulled.layers[0].wafer} .*image layer$`, 'm'))

    type Node = {children: Node[]; image?: {ref: string}; layer?: string; name: string}
    const forest = JSON.parse((await box.run(['tree', '--json'])).stdout) as Node[]
    let node = forest[0]
    expect(node.layer).to.match(/^sha256:/)
    while (node.children.length > 0 && node.name !== 'image') node = node.children[0]
    expect(node.image?.ref).to.equal(`oci:${layout}:test`)
    const drawn = (await box.run(['tree'])).stdout
    expect(drawn).to.include(`image (from oci:${layout}:test)`).and.include(`${pulled.layers[0].wafer} (image layer)`)
  })

  it('Ctrl-C midway leaves no half-made wafer, and the next pull reuses the layers that completed', async function () {
    // A layout with a small first layer and a big second one, so that the pull is caught unpacking the second.
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    const bundle = path.join(box.root, 'grow')
    await execa('umoci', ['unpack', '--image', `${layout}:test`, bundle])
    await execa('dd', ['if=/dev/urandom', `of=${path.join(bundle, 'rootfs', 'big')}`, 'bs=1M', 'count=192'])
    await execa('umoci', ['repack', '--image', `${layout}:big`, bundle])

    const {execa: start} = await import('execa')
    const child = start(process.execPath, [path.resolve('bin/run.js'), 'pull', `oci:${layout}:big`, 'big'], {
      env: box.env,
      reject: false,
      stdin: 'ignore',
    })
    // Wait until the three small layers are in, then interrupt while the big one unpacks.
    for (let i = 0; i < 600; i++) {
      const names = await fs.readdir(box.wafers).catch(() => [] as string[])
      if (
        names.filter((name) => name.startsWith('layer-')).length >= 3 &&
        names.some((name) => name.startsWith('.create-'))
      )
        break
      await new Promise((resolve) => {
        setTimeout(resolve, 20)
      })
    }

    child.kill('SIGINT')
    const result = await child
    expect(result.exitCode, String(result.stdout)).to.equal(130)
    expect(said(String(result.stderr))).to.match(/interrupted: big was not made; 3 layers unpacked completely are kept/)
    const names = await fs.readdir(box.wafers)
    expect(names.filter((name) => name.startsWith('.create-'))).to.deep.equal([])
    expect(names).to.not.include('big')
    expect(names.filter((name) => name.startsWith('layer-'))).to.have.length(3)
    expect(await fs.readdir(path.join(box.wafers, '.oci', 'tmp')).catch(() => [])).to.deep.equal([])

    const again = await box.run(['pull', `oci:${layout}:big`, 'big', '--json'])
    expect(again.exitCode, again.stderr).to.equal(0)
    expect((JSON.parse(again.stdout) as Pulled).layers.map((layer) => layer.made)).to.deep.equal([
      false,
      false,
      false,
      true,
    ])
  })

  it('pushes to oci-archive: and docker-archive: files and pulls them back, layer for layer the same', async function () {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    expect((await box.run(['pull', `oci:${layout}:test`, 'image'])).exitCode).to.equal(0)
    await box.wafer('mine', {files: {'etc/mine': 'mine\n'}, parent: 'image'})
    for (const [i, ref] of [
      `oci-archive:${path.join(box.root, 'mine.tar')}:v1`,
      `docker-archive:${path.join(box.root, 'mine-docker.tar')}`,
    ].entries()) {
      const push = await box.run(['push', 'mine', ref, '--json'])
      expect(push.exitCode, push.stderr).to.equal(0)
      const pushed = JSON.parse(push.stdout) as {layers: Layer[]}
      expect(pushed.layers).to.have.length(4)
      const pull = await box.run(['pull', ref, `back${i}`, '--json'])
      expect(pull.exitCode, pull.stderr).to.equal(0)
      const pulled = JSON.parse(pull.stdout) as Pulled
      for (const [j, layer] of pulled.layers.entries()) {
        expect(await treeListing(box.data(layer.wafer))).to.deep.equal(
          await treeListing(box.data(pushed.layers[j].wafer)),
        )
      }
    }
  })

  it('refuses to push a stack whose wafer is a mounted writable top, unless --force', async function () {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    expect((await box.run(['pull', `oci:${layout}:test`, 'image'])).exitCode).to.equal(0)
    expect((await box.run(['stack', 'mine', 'image'])).exitCode).to.equal(0)
    const target = path.join(box.root, 'out')
    const refusedPush = await box.run(['push', 'mine', `oci:${target}:v1`])
    expect(refusedPush.exitCode).to.equal(1)
    expect(said(refusedPush.stderr)).to.match(
      /wafer mine is the writable top of the stack at .*, so its files may change while they are packed\. .*wafers unstack mine.*--force/,
    )
    expect(await fs.stat(target).catch(() => undefined)).to.equal(undefined)
    const forced = await box.run(['push', 'mine', `oci:${target}:v1`, '--force'])
    expect(forced.exitCode, forced.stderr).to.equal(0)
    expect(forced.stderr).to.match(/pushing anyway \(--force\)/)
  })

  it('refuses a layer that does not match its digest, naming it, and makes no wafer', async function () {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8'))
    const manifestFile = path.join(layout, 'blobs', 'sha256', index.manifests[0].digest.slice(7))
    const manifest = JSON.parse(await fs.readFile(manifestFile, 'utf8'))
    const top = manifest.layers.at(-1).digest as string
    const blob = path.join(layout, 'blobs', 'sha256', top.slice(7))
    const bytes = await fs.readFile(blob)
    bytes[bytes.length - 20] ^= 0xff
    await fs.writeFile(blob, bytes)
    const run = await box.run(['pull', `oci:${layout}:test`, 'image'])
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.include(top)
    expect(hasStackTrace(run.stderr)).to.equal(false)
    const names = await fs.readdir(box.wafers)
    expect(names).to.not.include('image')
    expect(names.filter((name) => name.startsWith('.create-'))).to.deep.equal([])
    expect(names.filter((name) => name.startsWith('layer-'))).to.have.length(2)
  })

  it('never follows a symlink planted as $WAFERS/.oci', async function () {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    expect((await box.run(['pull', `oci:${layout}:test`, 'image'])).exitCode).to.equal(0)
    await execa('skopeo', ['copy', `oci:${layout}:test`, `oci-archive:${path.join(box.root, 'image.tar')}:test`])
    const elsewhere = path.join(box.root, 'elsewhere')
    await fs.mkdir(elsewhere)
    await fs.rm(path.join(box.wafers, '.oci'), {force: true, recursive: true})
    await fs.symlink(elsewhere, path.join(box.wafers, '.oci'))
    for (const args of [
      ['push', 'image', `oci:${path.join(box.root, 'out')}:v1`],
      ['pull', `oci-archive:${path.join(box.root, 'image.tar')}:test`, 'other'],
    ]) {
      const run = await box.run(args)
      expect(run.exitCode).to.equal(1)
      expect(said(run.stderr)).to.match(/\.oci is not a directory; remove it\./)
    }

    expect(await fs.readdir(elsewhere)).to.deep.equal([])
  })

  it('refuses a layer blob that is a symlink, a FIFO or not the size its manifest says, at once, making nothing', async function () {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8'))
    const manifestFile = path.join(layout, 'blobs', 'sha256', index.manifests[0].digest.slice(7))
    const manifest = JSON.parse(await fs.readFile(manifestFile, 'utf8'))
    const bottom = manifest.layers[0].digest as string
    const blob = path.join(layout, 'blobs', 'sha256', bottom.slice(7))
    const bytes = await fs.readFile(blob)
    const cases: Array<[string, () => Promise<void>, RegExp]> = [
      ['symlink', async () => fs.symlink('/dev/zero', blob), /is a symlink; wafers does not follow it\./],
      ['fifo', async () => execa('mkfifo', [blob]).then(() => {}), /is not a regular file\./],
      [
        'longer',
        async () => fs.writeFile(blob, Buffer.concat([bytes, Buffer.alloc(4096)])),
        /is \d+ bytes, not the \d+ its descriptor says\./,
      ],
    ]
    for (const [, plant, message] of cases) {
      await fs.rm(blob, {force: true})
      await plant()
      const run = await box.run(['pull', `oci:${layout}:test`, 'image'])
      expect(run.exitCode, run.stderr).to.equal(1)
      expect(said(run.stderr)).to.include(bottom)
      expect(said(run.stderr)).to.match(message)
      expect(hasStackTrace(run.stderr)).to.equal(false)
      expect(await fs.readdir(box.wafers).catch(() => [])).to.deep.equal([])
    }

    // index.json and the manifest are read the same way: a FIFO is refused, not waited on.
    await fs.rm(blob, {force: true})
    await fs.writeFile(blob, bytes)
    await fs.rename(path.join(layout, 'index.json'), path.join(box.root, 'index.json'))
    await execa('mkfifo', [path.join(layout, 'index.json')])
    const run = await box.run(['pull', `oci:${layout}:test`, 'image'])
    expect(run.exitCode).to.equal(1)
    expect(said(run.stderr)).to.match(/the index\.json of .* is not a regular file\./)
    await fs.rm(path.join(layout, 'index.json'))
    await fs.rename(path.join(box.root, 'index.json'), path.join(layout, 'index.json'))
    await fs.appendFile(manifestFile, ' ')
    const padded = await box.run(['pull', `oci:${layout}:test`, 'image'])
    expect(padded.exitCode).to.equal(1)
    expect(said(padded.stderr)).to.match(/not the \d+ its descriptor says\./)
  })

  it('a failed pull leaves no trace: no $WAFERS, no .oci, when it made them', async function () {
    const archive = path.join(box.root, 'not-an-archive')
    await fs.writeFile(archive, 'not a tar\n')
    for (const ref of [`docker-archive:${archive}`, `oci-archive:${archive}`, 'docker://127.0.0.1:1/wafers/x:1']) {
      const run = await box.run(['pull', ref, 'x', '--tls-verify=false'])
      expect(run.exitCode, ref).to.equal(1)
      expect(hasStackTrace(run.stderr)).to.equal(false)
      expect(
        await fs.stat(box.wafers).then(
          () => true,
          () => false,
        ),
        ref,
      ).to.equal(false)
    }

    await fs.mkdir(box.wafers)
    const run = await box.run(['pull', `docker-archive:${archive}`, 'x'])
    expect(run.exitCode).to.equal(1)
    expect(await fs.readdir(box.wafers)).to.deep.equal([])
  })

  it('pushes the history a build recorded: each step as it ran, and the metadata steps of a built top', async function () {
    await fs.mkdir(box.wafers)
    const meta = async (name: string, value: unknown) =>
      fs.writeFile(path.join(box.wafers, name, 'meta.json'), JSON.stringify(value))
    const arch = process.arch === 'x64' ? 'amd64' : process.arch
    await box.wafer('base', {files: {'etc/base': 'base\n'}})
    await box.wafer('step', {files: {'etc/step': 'step\n'}, parent: 'base'})
    await meta('step', {build: {history: [{created_by: 'RUN make step'}], instruction: 'RUN make step', key: 'k1'}})
    await box.wafer('built', {parent: 'step'})
    const history = [
      {created_by: 'wafers: wafer base'},
      {created_by: 'ENV A=1', empty_layer: true},
      {created_by: 'RUN make step'},
      {created_by: 'CMD ["sh"]', empty_layer: true},
    ]
    await meta('built', {
      build: {instruction: 'CMD ["sh"]', key: 'k2'},
      image: {architecture: arch, config: {Cmd: ['sh'], Env: ['A=1']}, history, os: 'linux'},
    })
    const configOf = async (layout: string) => {
      const {stdout} = await execa('skopeo', ['inspect', '--config', '--raw', `oci:${layout}:v1`])
      return JSON.parse(stdout) as {history: unknown[]}
    }

    const stepOut = path.join(box.root, 'step-out')
    const pushedStep = await box.run(['push', 'step', `oci:${stepOut}:v1`])
    expect(pushedStep.exitCode, pushedStep.stderr).to.equal(0)
    expect((await configOf(stepOut)).history).to.deep.equal([
      {created_by: 'wafers: wafer base'},
      {created_by: 'RUN make step'},
    ])
    const builtOut = path.join(box.root, 'built-out')
    const pushedBuilt = await box.run(['push', 'built', `oci:${builtOut}:v1`])
    expect(pushedBuilt.exitCode, pushedBuilt.stderr).to.equal(0)
    expect((await configOf(builtOut)).history).to.deep.equal(history)
  })

  it('pulls an image with no layers as just the empty NAME wafer', async function () {
    const layout = path.join(box.root, 'empty-layout')
    await execa('umoci', ['init', '--layout', layout])
    await execa('umoci', ['new', '--image', `${layout}:t`])
    // A metadata change adds an empty_layer history entry: a history, but no layer for it to go with.
    await execa('umoci', ['config', '--image', `${layout}:t`, '--config.cmd', 'sh'])
    const run = await box.run(['pull', `oci:${layout}:t`, 'nothing', '--json'])
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(JSON.parse(run.stdout)).to.include({made: true, name: 'nothing'})
    expect(JSON.parse(run.stdout).layers).to.deep.equal([])
    expect(await fs.readdir(box.wafers)).to.deep.equal(['nothing'])
    expect(await fs.readdir(box.data('nothing'))).to.deep.equal([])
    expect(
      await fs.stat(path.join(box.wafers, 'nothing', 'parent')).then(
        () => true,
        () => false,
      ),
    ).to.equal(false)
  })
})
