import {expect} from 'chai'
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {Sandbox, useSandbox} from '../helpers/sandbox.js'
import {makeUmociImage} from '../helpers/umoci.js'

/** A layer GNU tar writes (pax, nanosecond times), added to the umoci image as it is. */
async function addTimedLayer(work: string, image: string): Promise<void> {
  const source = path.join(work, 'timed')
  await fs.mkdir(path.join(source, 'srv', 'deep', 'er'), {recursive: true})
  await fs.writeFile(path.join(source, 'srv', 'file'), 'timed\n')
  await fs.symlink('file', path.join(source, 'srv', 'link'))
  await fs.writeFile(path.join(source, 'srv', 'deep', 'er', 'leaf'), 'leaf\n')
  const times: [string, string][] = [
    ['srv/file', '1700000000.123456789'],
    ['srv/link', '1700000001.000000001'],
    ['srv/deep/er/leaf', '1700000002.9999999'],
    // A directory's .123 is what came back .122999, then .122998, one microsecond less each cycle.
    ['srv/deep/er', '1600000000.123'],
    ['srv/deep', '1600000001.987654321'],
    ['srv', '1600000002.5'],
  ]
  for (const [file, at] of times) {
    await execa('touch', ['-h', '-d', `@${at}`, path.join(source, file)])
  }

  const tar = path.join(work, 'timed.tar')
  await execa('tar', ['--create', '--format=pax', '--numeric-owner', '--sort=name', '-C', source, '-f', tar, 'srv'])
  await execa('umoci', ['raw', 'add-layer', '--image', image, tar])
}

/** The manifest digest and layer digests of `ref`, as skopeo reads them. */
async function digestsOf(ref: string): Promise<{layers: string[]; manifest: string}> {
  const {stdout} = await execa('skopeo', ['inspect', '--raw', ref], {encoding: 'buffer'})
  const raw = Buffer.from(stdout)
  const manifest = JSON.parse(raw.toString('utf8')) as {layers: {digest: string}[]}
  return {
    layers: manifest.layers.map((layer) => layer.digest),
    manifest: `sha256:${createHash('sha256').update(raw).digest('hex')}`,
  }
}

/** Every entry umoci unpacked: type, mode, owner, size, link target, xattrs and mtime to the microsecond. */
async function umociListing(layout: string, tag: string, bundle: string): Promise<string[]> {
  await execa('umoci', ['unpack', '--image', `${layout}:${tag}`, bundle])
  const script = `
import os, sys
root = sys.argv[1]
for dirpath, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(dirs + files):
        file = os.path.join(dirpath, name)
        st = os.lstat(file)
        attrs = sorted(f'{a}={os.getxattr(file, a, follow_symlinks=False).hex()}' for a in os.listxattr(file, follow_symlinks=False))
        link = os.readlink(file) if os.path.islink(file) else ''
        size = st.st_size if not os.path.isdir(file) else 0
        print(os.path.relpath(file, root), oct(st.st_mode), st.st_uid, st.st_gid, size, link, (st.st_mtime_ns + 500) // 1000, *attrs)
`
  const {stdout} = await execa('python3', ['-c', script, path.join(bundle, 'rootfs')])
  return stdout.split('\n')
}

describe('oci: pull and push again give the same image, cycle after cycle', function () {
  this.timeout(300_000)
  let box: Sandbox

  useSandbox((created) => {
    box = created
  })

  it('pull -> push -> pull -> push over fresh stores: identical layer and manifest digests, umoci unpacks the same tree', async function () {
    const layout = path.join(box.root, 'layout')
    await makeUmociImage(layout, 'test')
    await addTimedLayer(box.root, `${layout}:test`)
    const pushed: {layers: string[]; manifest: string}[] = []
    let from = `oci:${layout}:test`
    for (let cycle = 1; cycle <= 3; cycle++) {
      // A fresh store each cycle: nothing is reused from an earlier pull or push.
      const store = await Sandbox.create()
      try {
        const pull = await store.run(['pull', from, 'image'])
        expect(pull.exitCode, pull.stderr).to.equal(0)
        const to = path.join(box.root, `pushed${cycle}`)
        const push = await store.run(['push', 'image', `oci:${to}:v1`])
        expect(push.exitCode, push.stderr).to.equal(0)
        pushed.push(await digestsOf(`oci:${to}:v1`))
        from = `oci:${to}:v1`
      } finally {
        await store.cleanup()
      }
    }

    expect(pushed[0].layers).to.have.length(4)
    expect(pushed[1], 'the second push').to.deep.equal(pushed[0])
    expect(pushed[2], 'the third push').to.deep.equal(pushed[0])
    const original = await umociListing(layout, 'test', path.join(box.root, 'original'))
    const third = await umociListing(path.join(box.root, 'pushed3'), 'v1', path.join(box.root, 'third'))
    expect(third).to.deep.equal(original)
    expect(third).to.include.members([
      'srv/deep/er 0o40755 0 0 0  1600000000123000',
      'srv/file 0o100644 0 0 6  1700000000123457',
    ])
  })
})
