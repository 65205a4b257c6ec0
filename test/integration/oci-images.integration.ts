import {expect} from 'chai'
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {Registry, useRegistry} from '../helpers/registry.js'
import {Sandbox, hasStackTrace, said, snapshot, useSandbox} from '../helpers/sandbox.js'
import {umociRootfs} from '../helpers/umoci.js'

interface Pulled {
  digest: string
  layers: Array<{made: boolean; wafer: string}>
  name: string
  replaced?: string
}

const HOST_ID = '0123456789abcdef0123456789abcdef\n'

/**
 * Makes with umoci, in layout `layout`, image `tag`: a layer with `files` on the layers of `from`
 * (a tag of the same layout), or on nothing.
 */
async function umociImage(layout: string, tag: string, files: Record<string, string>, from?: string): Promise<void> {
  if (!(await fs.stat(path.join(layout, 'oci-layout')).catch(() => undefined))) {
    await execa('umoci', ['init', '--layout', layout])
  }

  if (from === undefined) await execa('umoci', ['new', '--image', `${layout}:${tag}`])
  else await execa('umoci', ['tag', '--image', `${layout}:${from}`, tag])
  const bundle = `${layout}-bundle-${tag}`
  await execa('umoci', ['unpack', '--image', `${layout}:${tag}`, bundle])
  for (const [file, content] of Object.entries(files)) {
    const target = path.join(bundle, 'rootfs', file)
    await fs.mkdir(path.dirname(target), {recursive: true})
    await fs.writeFile(target, content)
  }

  await execa('umoci', ['repack', '--image', `${layout}:${tag}`, bundle])
  await fs.rm(bundle, {force: true, recursive: true})
}

/** Copies `layout:tag` to the registry as `repo` with skopeo. */
async function upload(registry: Registry, layout: string, tag: string, repo: string): Promise<string> {
  // umoci ends its JSON with a newline, which wafers' reading of `skopeo inspect --raw` loses (being
  // fixed apart from this test): the same JSON without it.
  await editConfig(layout, tag, (config) => config)
  await execa('skopeo', [
    'copy',
    '--dest-tls-verify=false',
    `oci:${layout}:${tag}`,
    `docker://${registry.host}/${repo}`,
  ])
  return `docker://${registry.host}/${repo}`
}

function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

/**
 * Rewrites the config of `layout:tag` (made by umoci) by `edit`, with the manifest and index.json
 * pointing at the new blobs, as a hostile or careless image builder could write it.
 */
async function editConfig(
  layout: string,
  tag: string,
  edit: (config: Record<string, unknown>) => unknown,
): Promise<void> {
  const blob = (digest: string) => path.join(layout, 'blobs', 'sha256', digest.slice(7))
  const write = async (data: string) => {
    await fs.writeFile(blob(sha256(data)), data)
    return {digest: sha256(data), size: Buffer.byteLength(data)}
  }

  const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8'))
  const entry = index.manifests.find(
    (item: {annotations?: Record<string, string>}) => item.annotations?.['org.opencontainers.image.ref.name'] === tag,
  )
  const manifest = JSON.parse(await fs.readFile(blob(entry.digest), 'utf8'))
  const config = JSON.parse(await fs.readFile(blob(manifest.config.digest), 'utf8'))
  manifest.config = {...manifest.config, ...(await write(JSON.stringify(edit(config))))}
  Object.assign(entry, await write(JSON.stringify(manifest)))
  await fs.writeFile(path.join(layout, 'index.json'), JSON.stringify(index))
}

describe('oci: what a pulled image is: machine ids, moved tags, odd configs', function () {
  this.timeout(300_000)
  let registry: Registry
  let box: Sandbox
  let layout: string

  useRegistry((started) => {
    registry = started
  })

  useSandbox((created) => {
    box = created
    layout = path.join(created.root, 'layout')
  })

  async function pull(...args: string[]) {
    const run = await box.run(['pull', '--tls-verify=false', '--json', ...args])
    if (run.exitCode === 0) return {...run, result: JSON.parse(run.stdout) as Pulled}
    // With --json, oclif prints the error as JSON on stdout: add its message where a user reads it.
    const message = (JSON.parse(run.stdout || '{}') as {error?: {message?: string}}).error?.message ?? ''
    return {...run, result: undefined, stderr: `${run.stderr}\n${message}`}
  }

  it('gives each top pulled from an image its own machine id, and push sends the id empty', async function () {
    await umociImage(layout, 'v1', {'etc/machine-id': HOST_ID, 'etc/os-release': 'ID=umoci\n'})
    const ref = await upload(registry, layout, 'v1', 'ids/base:1')
    const one = await pull(ref, 'one')
    expect(one.exitCode, one.stderr).to.equal(0)
    const two = await pull(ref, 'two')
    expect(two.exitCode, two.stderr).to.equal(0)
    const ids = await Promise.all(
      ['one', 'two'].map((name) => fs.readFile(box.data(name, 'etc', 'machine-id'), 'utf8')),
    )
    for (const id of ids)
      expect(id)
        .to.match(/^[\da-f]{32}\n$/)
        .and.not.equal(HOST_ID)
    expect(ids[0]).to.not.equal(ids[1])
    // Stacked, the container sees its own id over the image's.
    expect((await box.run(['stack', 'one'])).exitCode).to.equal(0)
    expect(await fs.readFile(box.stack('one', 'etc', 'machine-id'), 'utf8')).to.equal(ids[0])
    expect((await box.run(['unstack', 'one'])).exitCode).to.equal(0)

    // Pushed again, the image carries the id empty (umoci reads it back) and the top that holds
    // only its machine id adds no layer.
    const push = await box.run(['push', 'one', `${registry.host}/ids/again:1`, '--tls-verify=false', '--json'])
    expect(push.exitCode, push.stderr).to.equal(0)
    expect((JSON.parse(push.stdout) as {emptyWafers: string[]; layers: unknown[]}).emptyWafers).to.deep.equal(['one'])
    const back = path.join(box.root, 'back')
    const rootfs = await umociRootfs(`docker://${registry.host}/ids/again:1`, back)
    expect(await fs.readFile(path.join(rootfs, 'etc', 'machine-id'), 'utf8')).to.equal('')
    expect(await fs.readFile(path.join(rootfs, 'etc', 'os-release'), 'utf8')).to.equal('ID=umoci\n')
    const inspect = JSON.parse((await execa('skopeo', ['inspect', `oci:${back}/layout:unpacked`])).stdout) as {
      Layers: string[]
    }
    expect(inspect.Layers).to.have.length(1)
  })

  it('pulls a moved tag: the new layers only, NAME re-pointed; never a stacked NAME, nor one with children unless --replace', async function () {
    await umociImage(layout, 'v1', {'srv/one': '1\n'})
    await umociImage(layout, 'v2', {'srv/two': '2\n'}, 'v1')
    await umociImage(layout, 'v3', {'srv/three': '3\n'}, 'v2')
    const ref = await upload(registry, layout, 'v1', 'moved/app:1')
    const first = await pull(ref, 'app')
    expect(first.exitCode, first.stderr).to.equal(0)

    await upload(registry, layout, 'v2', 'moved/app:1')
    const second = await pull(ref, 'app')
    expect(second.exitCode, second.stderr).to.equal(0)
    expect(second.result!.replaced).to.equal(first.result!.digest)
    expect(second.result!.layers.map((layer) => layer.made)).to.deep.equal([false, true])
    expect((await fs.readFile(path.join(box.wafers, 'app', 'parent'), 'utf8')).trim()).to.equal(
      second.result!.layers[1].wafer,
    )
    expect((await box.run(['stack', 'app'])).exitCode).to.equal(0)
    expect(await fs.readFile(box.stack('app', 'srv', 'two'), 'utf8')).to.equal('2\n')

    // Stacked: refused in one sentence, nothing downloaded or changed.
    await upload(registry, layout, 'v3', 'moved/app:1')
    const before = await snapshot(box.wafers)
    const stacked = await pull(ref, 'app')
    expect(stacked.exitCode).to.equal(1)
    expect(said(stacked.stderr)).to.include('now names').and.include('app is stacked at')
    expect(hasStackTrace(stacked.stderr)).to.equal(false)
    expect(await snapshot(box.wafers)).to.deep.equal(before)
    expect((await box.run(['unstack', 'app'])).exitCode).to.equal(0)

    // Children see the change: refused unless --replace, which says so.
    expect((await box.run(['create', 'kid', 'app'])).exitCode).to.equal(0)
    const withKid = await box.run(['pull', '--tls-verify=false', ref, 'app'])
    expect(withKid.exitCode).to.equal(1)
    expect(said(withKid.stderr)).to.include('kid is built on app').and.include('--replace')
    const replaced = await box.run(['pull', '--tls-verify=false', ref, 'app', '--replace'])
    expect(replaced.exitCode, replaced.stderr).to.equal(0)
    expect(replaced.stdout).to.include('which held sha256:')
    expect(said(replaced.stderr)).to.include('kid, built on it, sees it too')
    expect((await box.run(['stack', 'kid'])).exitCode).to.equal(0)
    expect(await fs.readFile(box.stack('kid', 'srv', 'three'), 'utf8')).to.equal('3\n')
    expect((await box.run(['unstack', 'kid'])).exitCode).to.equal(0)
    expect((await box.run(['rm', '--yes', 'kid'])).exitCode).to.equal(0)

    // Files of its own would lie on the new image: refused unless --replace, which keeps them.
    await umociImage(layout, 'v4', {'srv/four': '4\n'}, 'v3')
    await upload(registry, layout, 'v4', 'moved/app:1')
    await fs.writeFile(box.data('app', 'mine'), 'mine\n')
    const own = await box.run(['pull', '--tls-verify=false', ref, 'app'])
    expect(own.exitCode).to.equal(1)
    expect(said(own.stderr)).to.include('app has files of its own').and.include('--replace')
    const kept = await pull(ref, 'app', '--replace')
    expect(kept.exitCode, kept.stderr).to.equal(0)
    expect((await box.run(['stack', 'app'])).exitCode).to.equal(0)
    expect(await fs.readFile(box.stack('app', 'mine'), 'utf8')).to.equal('mine\n')
    expect(await fs.readFile(box.stack('app', 'srv', 'four'), 'utf8')).to.equal('4\n')
    expect((await box.run(['unstack', 'app'])).exitCode).to.equal(0)

    // Another image into app: refused, naming --replace; nothing changed.
    const other = await upload(registry, layout, 'v1', 'moved/other:1')
    const beforeOther = await snapshot(box.wafers)
    const refused = await box.run(['pull', '--tls-verify=false', other, 'app'])
    expect(refused.exitCode).to.equal(1)
    expect(said(refused.stderr)).to.include('already exists and holds').and.include('--replace')
    expect(await snapshot(box.wafers)).to.deep.equal(beforeOther)
  })

  it('refuses configs whose fields have odd types, naming the field, and makes nothing', async function () {
    await umociImage(layout, 'v1', {'srv/one': '1\n'})
    const cases: Array<[string, (config: Record<string, unknown>) => unknown, string]> = [
      [
        'env',
        (config) => ({...config, config: {...(config.config as object), Env: 5}}),
        'config.Env that is not a list of strings',
      ],
      ['cmd', (config) => ({...config, config: {Cmd: [1, 2]}}), 'config.Cmd that is not a list of strings'],
      ['string', (config) => ({...config, config: 'x'}), 'a config field that is not an object'],
      ['workdir', (config) => ({...config, config: {WorkingDir: ['/']}}), 'config.WorkingDir that is not a string'],
      ['history', (config) => ({...config, history: 'x'}), 'a history that is not a list'],
      ['not-object', () => 'just a string', 'is not a JSON object'],
    ]
    for (const [tag, edit, message] of cases) {
      await execa('umoci', ['tag', '--image', `${layout}:v1`, tag])
      await editConfig(layout, tag, edit)
      const ref = await upload(registry, layout, tag, `odd/${tag}:1`)
      const run = await pull(ref)
      expect(run.exitCode, tag).to.equal(1)
      expect(said(run.stderr), tag).to.include(message)
      expect(hasStackTrace(run.stderr)).to.equal(false)
      expect(await box.run(['list', '--json']).then((list) => JSON.parse(list.stdout))).to.deep.equal([])
    }

    // null fields, as Docker writes them, are fine.
    await execa('umoci', ['tag', '--image', `${layout}:v1`, 'nulls'])
    await editConfig(layout, 'nulls', (config) => ({...config, config: {Cmd: null, Env: null, WorkingDir: '/srv'}}))
    const ok = await pull(await upload(registry, layout, 'nulls', 'odd/nulls:1'))
    expect(ok.exitCode, ok.stderr).to.equal(0)
  })

  it('cuts names and paths in messages to 200 characters', async function () {
    const long = await box.run(['pull', 'oci:/nonexistent:t', 'a'.repeat(5000)])
    expect(long.exitCode).to.equal(1)
    expect(said(long.stderr)).to.include(`wafer name "${'a'.repeat(200)}"… is not valid`)
    const deep = await box.run(['pull', `oci:/${'a/'.repeat(10_000)}x`, 'deep'])
    const ref = await box.run(['pull', `docker://${'b'.repeat(5000)}:x:y`])
    for (const run of [long, deep, ref]) {
      expect(run.exitCode).to.equal(1)
      expect(hasStackTrace(run.stderr)).to.equal(false)
      // Progress lines and the error alike: no name or path longer than 200 characters and `…`.
      for (const line of run.stderr.split('\n')) expect(line.length).to.be.below(700)
      expect(run.stderr.length).to.be.below(2000)
    }

    expect(said(deep.stderr))
      .to.include(`${'a/'.repeat(90)}`)
      .and.include('…')
      .and.not.include('a/'.repeat(101))
  })
})
