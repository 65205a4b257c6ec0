import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {Registry, useRegistry} from '../helpers/registry.js'
import {Sandbox, hasStackTrace, nspawnIn, useSandbox} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'
import {umociRootfs} from '../helpers/umoci.js'

interface Layer {
  digest: string
  made: boolean
  wafer: string
}

/** A stack on a busybox base: base (busybox), app (files of all kinds), top (no files of its own). */
async function makeStack(box: Sandbox): Promise<void> {
  expect((await box.run(['create', 'base', '--seed', 'busybox'])).exitCode).to.equal(0)
  await fs.writeFile(box.data('base', 'etc', 'hostname'), 'base\n')
  expect((await box.run(['create', 'app', 'base'])).exitCode).to.equal(0)
  const data = box.data('app')
  await fs.mkdir(path.join(data, 'srv', 'app'), {recursive: true})
  await fs.writeFile(path.join(data, 'srv', 'app', 'hello'), 'hello from app\n')
  await fs.chown(path.join(data, 'srv', 'app', 'hello'), 1000, 1000)
  await fs.writeFile(path.join(data, 'srv', 'app', 'tool'), '#!/bin/sh\necho tool\n')
  await fs.chmod(path.join(data, 'srv', 'app', 'tool'), 0o4755)
  await fs.link(path.join(data, 'srv', 'app', 'tool'), path.join(data, 'srv', 'app', 'tool-again'))
  await fs.symlink('hello', path.join(data, 'srv', 'app', 'greeting'))
  await execa('setfattr', ['-n', 'user.wafers', '-v', 'kept', path.join(data, 'srv', 'app', 'hello')])
  // A file of the base deleted in app: a whiteout both ways.
  await fs.mkdir(path.join(data, 'etc'), {recursive: true})
  // overlayfs makes its whiteouts with mode 0000, as a pull does.
  await execa('mknod', ['-m', '0', path.join(data, 'etc', 'hostname'), 'c', '0', '0'])
  await box.wafer('top', {parent: 'app'})
}

function json<T>(stdout: string): T {
  return JSON.parse(stdout) as T
}

describe('oci: push to and pull from a real registry', function () {
  this.timeout(300_000)
  let registry: Registry
  let box: Sandbox
  let other: Sandbox

  useRegistry((started) => {
    registry = started
  })

  useSandbox((created) => {
    box = created
  })

  beforeEach(async function () {
    other = await Sandbox.create()
  })

  afterEach(async function () {
    await other?.cleanup()
  })

  it('pushes a busybox stack, pulls it on a second machine, stacks and runs it, file for file the same', async function () {
    await makeStack(box)
    const ref = `docker://${registry.host}/wafers/app:1`
    const push = await box.run(['push', 'top', ref, '--tls-verify=false', '--json'])
    expect(push.exitCode, push.stderr).to.equal(0)
    const pushed = json<{digest: string; emptyWafers: string[]; layers: Layer[]}>(push.stdout)
    expect(pushed.layers.map((layer) => layer.wafer)).to.deep.equal(['base', 'app'])
    expect(pushed.layers.every((layer) => layer.made)).to.equal(true)
    expect(pushed.emptyWafers).to.deep.equal(['top'])

    const pull = await other.run(['pull', `${registry.host}/wafers/app:1`, '--tls-verify=false', '--json'])
    expect(pull.exitCode, pull.stderr).to.equal(0)
    const pulled = json<{digest: string; layers: Layer[]; name: string}>(pull.stdout)
    expect(pulled.name).to.equal('app')
    expect(pulled.digest).to.equal(pushed.digest)
    expect(pulled.layers.map((layer) => layer.digest)).to.deep.equal(pushed.layers.map((layer) => layer.digest))
    // Each layer wafer holds what the wafer it was packed from holds, file for file, but the
    // machine id, which the image carries empty.
    const noId = {ignore: ['etc/machine-id']}
    for (const [i, layer] of pulled.layers.entries()) {
      expect(await treeListing(other.data(layer.wafer), noId)).to.deep.equal(
        await treeListing(box.data(pushed.layers[i].wafer), noId),
      )
    }

    expect(await fs.readFile(other.data(pulled.layers[1].wafer, 'etc', 'machine-id'), 'utf8')).to.equal('')
    expect((await box.run(['stack', 'top'])).exitCode).to.equal(0)
    const stacked = await other.run(['stack', 'app'])
    expect(stacked.exitCode, stacked.stderr).to.equal(0)
    // The pulled top has an etc of its own for its machine id, made now (so with another mtime).
    const withoutEtc = async (dir: string) => (await treeListing(dir, noId)).filter((line) => !line.startsWith('etc '))
    expect(await withoutEtc(other.stack('app'))).to.deep.equal(await withoutEtc(box.stack('top')))
    const ran = await nspawnIn(other.stack('app'), [
      '/bin/sh',
      '-c',
      'cat /srv/app/hello; test -e /etc/hostname || echo gone',
    ])
    expect(ran.stdout).to.include('hello from app').and.include('gone')
  })

  it('writes what skopeo inspect and umoci unpack read, and a second push packs and uploads nothing new', async function () {
    await makeStack(box)
    const ref = `docker://${registry.host}/wafers/app:2`
    const first = json<{digest: string; layers: Layer[]}>(
      (await box.run(['push', 'top', ref, '--tls-verify=false', '--json'])).stdout,
    )
    const again = await box.run(['push', 'top', ref, '--tls-verify=false', '--json'])
    expect(again.exitCode, again.stderr).to.equal(0)
    const second = json<{digest: string; layers: Layer[]}>(again.stdout)
    expect(second.layers.map((layer) => layer.digest)).to.deep.equal(first.layers.map((layer) => layer.digest))
    expect(second.layers.map((layer) => layer.made)).to.deep.equal([false, false])
    expect(second.digest).to.equal(first.digest)

    const inspect = await execa('skopeo', ['inspect', '--tls-verify=false', ref])
    const info = JSON.parse(inspect.stdout) as {Architecture: string; Digest: string; Layers: string[]}
    expect(info.Digest).to.equal(first.digest)
    expect(info.Layers).to.deep.equal(first.layers.map((layer) => layer.digest))

    const rootfs = await umociRootfs(ref, path.join(box.root, 'umoci'))
    expect((await box.run(['stack', 'top'])).exitCode).to.equal(0)
    const noId = {ignore: ['etc/machine-id']}
    expect(await treeListing(rootfs, noId)).to.deep.equal(await treeListing(box.stack('top'), noId))
    // The image carries the machine id empty, as image builders leave it; the stack keeps its own.
    expect(await fs.readFile(path.join(rootfs, 'etc', 'machine-id'), 'utf8')).to.equal('')
    expect(await fs.readFile(box.stack('top', 'etc', 'machine-id'), 'utf8')).to.match(/^[\da-f]{32}\n$/)
  })

  it('pulls only the layers not yet here', async function () {
    await makeStack(box)
    expect((await box.run(['push', 'app', `${registry.host}/wafers/base:1`, '--tls-verify=false'])).exitCode).to.equal(
      0,
    )
    await box.wafer('more', {files: {'srv/more': 'more\n'}, parent: 'app'})
    expect((await box.run(['push', 'more', `${registry.host}/wafers/more:1`, '--tls-verify=false'])).exitCode).to.equal(
      0,
    )

    const first = await other.run(['pull', `${registry.host}/wafers/base:1`, '--tls-verify=false', '--json'])
    expect(first.exitCode, first.stderr).to.equal(0)
    const second = await other.run(['pull', `${registry.host}/wafers/more:1`, 'more', '--tls-verify=false', '--json'])
    expect(second.exitCode, second.stderr).to.equal(0)
    const layers = json<{layers: Layer[]}>(second.stdout).layers
    expect(layers.map((layer) => layer.made)).to.deep.equal([false, false, true])
    expect(layers.slice(0, 2).map((layer) => layer.wafer)).to.deep.equal(
      json<{layers: Layer[]}>(first.stdout).layers.map((layer) => layer.wafer),
    )
    expect(await fs.readFile(other.data(layers[2].wafer, 'srv', 'more'), 'utf8')).to.equal('more\n')

    const again = await other.run(['pull', `${registry.host}/wafers/more:1`, 'more', '--tls-verify=false'])
    expect(again.exitCode).to.equal(0)
    expect(again.stdout).to.include('more is up to date')
    expect(hasStackTrace(again.stderr)).to.equal(false)
  })
})
