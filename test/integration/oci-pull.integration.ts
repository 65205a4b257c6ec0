import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {Sandbox, hasStackTrace, useSandbox} from '../helpers/sandbox.js'
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

/** stderr as one line: oclif wraps error messages at the terminal width, behind " ›   ". */
const said = (stderr: string): string => stderr.replaceAll(/ *\n ›\s+/g, ' ')

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
      // eslint-disable-next-line no-await-in-loop
      const names = await fs.readdir(box.wafers).catch(() => [] as string[])
      if (
        names.filter((name) => name.startsWith('layer-')).length >= 3 &&
        names.some((name) => name.startsWith('.create-'))
      )
        break
      // eslint-disable-next-line no-await-in-loop
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
      // eslint-disable-next-line no-await-in-loop
      const push = await box.run(['push', 'mine', ref, '--json'])
      expect(push.exitCode, push.stderr).to.equal(0)
      const pushed = JSON.parse(push.stdout) as {layers: Layer[]}
      expect(pushed.layers).to.have.length(4)
      // eslint-disable-next-line no-await-in-loop
      const pull = await box.run(['pull', ref, `back${i}`, '--json'])
      expect(pull.exitCode, pull.stderr).to.equal(0)
      const pulled = JSON.parse(pull.stdout) as Pulled
      for (const [j, layer] of pulled.layers.entries()) {
        // eslint-disable-next-line no-await-in-loop
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
})
