import {expect} from 'chai'
import {execa} from 'execa'
import fc from 'fast-check'
import {createReadStream, promises as fs} from 'node:fs'
import path from 'node:path'
import {Readable} from 'node:stream'
import {createGzip} from 'node:zlib'

import {WafersError} from '../../src/lib/errors.js'
import {unpackLayer} from '../../src/lib/layer/archive.js'
import {BLOCK, encodeHeader, padded, paxRecord} from '../../src/lib/layer/tar/header.js'
import {readTar} from '../../src/lib/layer/tar/reader.js'
import {writeLayoutOfTars} from '../helpers/layout.js'
import {Sandbox, buildWeb, said, useSandbox} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'

interface Spec {
  content?: Buffer | string
  link?: string
  mode?: number
  name: string
  /** A pax 'x' header before the entry, its bytes exactly as given. */
  pax?: Buffer
  /** The header's size field, when it should say something else than the content's length. */
  size?: number
  type?: string
}

/** A pax record of `rest` (all after the length, odd or not) with its length right. */
function sized(rest: string): Buffer {
  let length = rest.length + 1
  while (String(length).length + rest.length !== length) length = String(length).length + rest.length
  return Buffer.from(`${length}${rest}`)
}

function pad(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc(padded(data.length) - data.length)])
}

/** A tar made byte by byte (odd pax records and all), as no tar program would write it. */
function rawTar(specs: Spec[]): Buffer {
  const parts: Buffer[] = []
  for (const spec of specs) {
    const content = Buffer.from(spec.content ?? '')
    const type = spec.type ?? '0'
    const name = Buffer.from(spec.name)
    const link = Buffer.from(spec.link ?? '')
    // Names too long for ustar go in the one pax header, before the records the test gives.
    const pax = Buffer.concat([
      ...(name.length > 100 ? [paxRecord('path', name)] : []),
      ...(link.length > 100 ? [paxRecord('linkpath', link)] : []),
      spec.pax ?? Buffer.alloc(0),
    ])
    if (pax.length > 0) {
      parts.push(
        encodeHeader({
          gid: 0,
          mode: 0o644,
          mtime: 0,
          name: Buffer.from('PaxHeader'),
          size: pax.length,
          typeflag: 'x',
          uid: 0,
        }),
        pad(pax),
      )
    }

    parts.push(
      encodeHeader({
        gid: 0,
        linkname: link.subarray(0, 100),
        mode: spec.mode ?? (type === '5' ? 0o755 : 0o644),
        mtime: 1_500_000_000,
        name: name.subarray(0, 100),
        size: spec.size ?? content.length,
        typeflag: type,
        uid: 0,
      }),
      pad(content),
    )
  }

  return Buffer.concat([...parts, Buffer.alloc(2 * BLOCK)])
}

/** Runs a python3 script (tarfile makes the well-formed tars of these tests). */
async function python(script: string, ...args: string[]): Promise<string> {
  return (await execa('python3', ['-c', script, ...args])).stdout
}

/** Mode, mtime (ns) and every xattr (trusted.* too) of each path under a host directory. */
async function canaryState(dir: string): Promise<string[]> {
  const xattr = await import('@napi-rs/xattr')
  const {getAttribute, listAttributes} = ((xattr as {default?: unknown}).default ?? xattr) as {
    getAttribute(file: string, name: string): Promise<Buffer | null>
    listAttributes(file: string): Promise<string[]>
  }
  const out: string[] = []
  const visit = async (file: string, rel: string): Promise<void> => {
    const stat = await fs.lstat(file, {bigint: true})
    const names = (await listAttributes(file)).sort()
    const values = await Promise.all(
      names.map(async (name) => `${name}=${(await getAttribute(file, name))?.toString('hex')}`),
    )
    out.push(`${rel} ${stat.mode.toString(8)} ${stat.uid}:${stat.gid} ${stat.mtimeNs} ${values.join(',')}`)
    if (stat.isDirectory())
      for (const name of (await fs.readdir(file)).sort()) await visit(path.join(file, name), `${rel}/${name}`)
  }

  await visit(dir, '.')
  return out
}

/** A host directory outside the store that a hostile layer would like to change. */
async function makeCanary(box: Sandbox): Promise<string> {
  const canary = path.join(box.root, 'canary')
  await fs.mkdir(path.join(canary, 'victim'), {recursive: true})
  await fs.writeFile(path.join(canary, 'victim', 'file'), 'host data\n')
  await execa('setfattr', ['-n', 'user.canary', '-v', 'untouched', path.join(canary, 'victim')])
  await fs.chmod(path.join(canary, 'victim'), 0o750)
  await execa('touch', ['-d', '2001-02-03 04:05:06', path.join(canary, 'victim'), canary])
  return canary
}

/** The wafers of the store, by name. */
async function wafersIn(box: Sandbox): Promise<string[]> {
  return (await fs.readdir(box.wafers).catch(() => [] as string[])).filter((name) => !name.startsWith('.')).sort()
}

describe('layer unpack: one reader, one writer', function () {
  this.timeout(300_000)
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  async function pullRefused(layers: Buffer[], message: RegExp | string): Promise<void> {
    const canary = await makeCanary(box)
    const layout = path.join(box.root, 'layout')
    // By hand: a hostile layer must reach wafers as a registry would serve it, unchanged.
    await writeLayoutOfTars(layout, 'v1', layers)
    const before = await canaryState(canary)
    const storeBefore = await wafersIn(box)
    const run = await box.run(['pull', `oci:${layout}:v1`, 'image'])
    expect(run.exitCode, run.stderr).to.equal(1)
    const sentence = said(run.stderr)
      .replace(/^\s*›?\s*Error:\s*/, '')
      .trim()
    if (typeof message === 'string') expect(sentence).to.include(message)
    else expect(sentence).to.match(message)
    expect(sentence.split(/\.\s/).length, 'one sentence').to.be.at.most(2)
    expect(await canaryState(canary)).to.deep.equal(before)
    expect(await wafersIn(box), 'no wafer made').to.deep.equal(storeBefore)
  }

  describe('attacks, each refused in one sentence with the host untouched', () => {
    it('a pax record with two blanks before its key (a rename to GNU tar), then a symlink to the host', async () => {
      const canary = path.join(box.root, 'canary')
      const layer = rawTar([
        {mode: 0o777, name: 'a/victim/', pax: Buffer.from('14  path=zzz/\n'), type: '5'},
        {name: 'a/victim/.wh..wh..opq'},
        {link: canary, name: 'a', type: '2'},
      ])
      await pullRefused(
        [layer],
        'its entry "a/victim/" has a malformed pax header (a pax record has blanks in its key)',
      )
    })

    it('a pax size=0 record that would desynchronise readers over a hidden 1 TiB sparse file', async () => {
      const hidden = Buffer.concat([
        encodeHeader({gid: 0, mode: 0o644, mtime: 0, name: Buffer.from('huge'), size: 0, typeflag: 'S', uid: 0}),
        Buffer.alloc(BLOCK),
      ])
      const layer = rawTar([{content: hidden, name: 'cover', pax: paxRecord('size', '0')}])
      await pullRefused([layer], 'its entry "cover" has a pax size that contradicts its header')
    })

    it('a GNU sparse file of 1 TiB', async () => {
      const layer = rawTar([
        {
          name: 'huge',
          pax: Buffer.concat([paxRecord('GNU.sparse.major', '1'), paxRecord('GNU.sparse.realsize', '1099511627776')]),
        },
      ])
      await pullRefused([layer], 'its entry "huge" is a sparse file, which wafers does not unpack')
    })

    it('a path through a symlink to the host made by an earlier entry', async () => {
      const canary = path.join(box.root, 'canary')
      const layer = rawTar([
        {link: canary, name: 'a', type: '2'},
        {mode: 0o777, name: 'a/victim/', type: '5'},
      ])
      await pullRefused([layer], 'its entry "a/victim/" lands through the symlink "a" made by an earlier entry')
    })

    it('a hard link to a host file', async () => {
      const layer = rawTar([{link: '../canary/victim/file', name: 'stolen', type: '1'}])
      await pullRefused([layer], 'its entry "stolen" has ".." in its hard link target')
    })

    it('a tarball whose directory carries trusted.overlay.opaque=y, added FROM scratch, makes no opaque directory', async () => {
      const context = path.join(box.root, 'context')
      await fs.mkdir(context)
      await fs.mkdir(box.wafers, {recursive: true})
      await python(
        `import tarfile, io, sys
with tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT) as t:
    d = tarfile.TarInfo('d'); d.type = tarfile.DIRTYPE; d.mode = 0o755
    d.pax_headers = {'SCHILY.xattr.trusted.overlay.opaque': 'y', 'SCHILY.xattr.user.kept': 'yes'}
    t.addfile(d)
    f = tarfile.TarInfo('d/f'); f.size = 3; t.addfile(f, io.BytesIO(b'hi\\n'))`,
        path.join(context, 'layer.tar'),
      )
      const {json, run} = await buildWeb(box, context, 'FROM scratch\nADD layer.tar /\n')
      expect(run.exitCode, run.stderr).to.equal(0)
      const wafer = json.steps.find((step) => step.instruction.startsWith('ADD'))!.wafer!
      const listing = await treeListing(box.data(wafer), {overlayXattrs: true})
      const d = listing.find((line) => line.startsWith('d d '))!
      expect(d).to.include(`trusted.overlay.overlay.opaque=${Buffer.from('y').toString('base64')}`)
      expect(d).to.include('user.kept=')
      expect(d).not.to.match(/ trusted\.overlay\.opaque=/)
    })
  })

  it('ADD follows a symlinked directory of the image within it, as a chrooted tar would', async () => {
    const context = path.join(box.root, 'context')
    await fs.mkdir(context)
    await fs.mkdir(box.wafers, {recursive: true})
    await python(
      `import tarfile, io, sys
with tarfile.open(sys.argv[1], 'w') as t:
    for name in ['usr', 'usr/lib']:
        d = tarfile.TarInfo(name); d.type = tarfile.DIRTYPE; d.mode = 0o755; t.addfile(d)
    l = tarfile.TarInfo('lib'); l.type = tarfile.SYMTYPE; l.linkname = '/usr/lib'; t.addfile(l)
with tarfile.open(sys.argv[2], 'w') as t:
    r = tarfile.TarInfo('./'); r.type = tarfile.DIRTYPE; r.mode = 0o700; t.addfile(r)
    f = tarfile.TarInfo('lib/extra.so'); f.size = 3; t.addfile(f, io.BytesIO(b'so\\n'))`,
      path.join(context, 'base.tar'),
      path.join(context, 'more.tar'),
    )
    const {json, run} = await buildWeb(box, context, 'FROM scratch\nADD base.tar /\nADD more.tar /\n')
    expect(run.exitCode, run.stderr).to.equal(0)
    const top = json.steps.at(-1)!.wafer!
    expect(await treeListing(box.data(top))).to.satisfy((lines: string[]) =>
      lines.some((line) => line.startsWith('usr/lib/extra.so f ')),
    )
    expect((await fs.lstat(path.join(box.data(top), 'lib')).catch(() => undefined))?.isDirectory() ?? false).to.equal(
      false,
    )
    // The image's / keeps its mode, as tar --no-overwrite-dir keeps it.
    expect((await fs.stat(box.data(top))).mode & 0o7777).not.to.equal(0o700)
  })

  describe('what other unpackers do', () => {
    /** Pulls `layout`:v1, stacks it, and returns the stack's listing and umoci's unpack's. */
    async function pullAndCompare(layout: string): Promise<{ours: string[]; umoci: string[]}> {
      const run = await box.run(['pull', `oci:${layout}:v1`, 'image'])
      expect(run.exitCode, run.stderr).to.equal(0)
      expect((await box.run(['stack', 'image'])).exitCode).to.equal(0)
      const bundle = path.join(box.root, 'bundle')
      await execa('umoci', ['unpack', '--image', `${layout}:v1`, bundle])
      return {ours: await treeListing(box.stack('image')), umoci: await treeListing(path.join(bundle, 'rootfs'))}
    }

    /** An umoci image at `layout`:v1 whose first layer umoci made from `fill`, then `tars` added raw. */
    async function umociImage(fill: (root: string) => Promise<void>, tars: Buffer[]): Promise<string> {
      const layout = path.join(box.root, 'layout')
      await execa('umoci', ['init', '--layout', layout])
      await execa('umoci', ['new', '--image', `${layout}:v1`])
      const bundle = path.join(box.root, 'one')
      await execa('umoci', ['unpack', '--image', `${layout}:v1`, bundle])
      await fill(path.join(bundle, 'rootfs'))
      await execa('umoci', ['repack', '--image', `${layout}:v1`, bundle])
      for (const [i, tar] of tars.entries()) {
        const file = path.join(box.root, `layer-${i}.tar`)
        await fs.writeFile(file, tar)
        await execa('umoci', ['raw', 'add-layer', '--image', `${layout}:v1`, file])
      }

      return layout
    }

    it('a parent the layer does not list keeps the owner, mode, time and xattrs of the layer below (#16.3)', async () => {
      const layout = await umociImage(
        async (root) => {
          await fs.mkdir(path.join(root, 'priv'), {mode: 0o700})
          await fs.writeFile(path.join(root, 'priv', 'old'), 'old\n')
          await fs.chown(path.join(root, 'priv'), 1000, 1000)
          await fs.chmod(path.join(root, 'priv'), 0o700)
          await execa('setfattr', ['-n', 'user.lower', '-v', 'kept', path.join(root, 'priv')])
          await execa('touch', ['-d', '2001-02-03 04:05:06', path.join(root, 'priv')])
        },
        [rawTar([{content: 'new\n', name: 'priv/new'}])],
      )
      const {ours, umoci} = await pullAndCompare(layout)
      expect(ours).to.deep.equal(umoci)
      const priv = ours.find((line) => line.startsWith('priv d '))!
      expect(priv).to.match(/^priv d 0700 1000:1000 user\.lower=\S+ mtime=\d+$/)
    })

    it('a directory replaced by a file, with a whiteout under it, as umoci accepts (#16.4)', async () => {
      const layout = await umociImage(
        async (root) => {
          await fs.mkdir(path.join(root, 'd'))
          await fs.writeFile(path.join(root, 'd', 'x'), 'x\n')
        },
        [rawTar([{content: 'file\n', name: 'd'}, {name: 'd/.wh.x'}])],
      )
      const {ours, umoci} = await pullAndCompare(layout)
      expect(ours).to.deep.equal(umoci)
      expect(ours.some((line) => line.startsWith('d f '))).to.equal(true)
    })

    it('500 whiteouts become 500 overlayfs whiteouts hiding the files below', async () => {
      const names = Array.from({length: 500}, (_, i) => `f${i}`)
      const layout = await umociImage(
        async (root) => {
          await fs.mkdir(path.join(root, 'many'))
          await Promise.all(names.map((name) => fs.writeFile(path.join(root, 'many', name), name)))
          await fs.writeFile(path.join(root, 'many', 'stays'), 'stays\n')
        },
        [rawTar(names.map((name) => ({name: `many/.wh.${name}`})))],
      )
      const {ours, umoci} = await pullAndCompare(layout)
      expect(ours).to.deep.equal(umoci)
      expect(ours.filter((line) => line.startsWith('many/'))).to.have.length(1)
    })

    it('a whiteout never shares the inode of a file that replaced an earlier whiteout', async () => {
      const tar = rawTar([{name: 'a/.wh.x'}, {content: 'secret\n', name: 'a/x'}, {name: 'b/.wh.y'}])
      const file = path.join(box.root, 'layer.tar')
      await fs.writeFile(file, tar)
      const data = path.join(box.root, 'data')
      await fs.mkdir(data)
      await unpackLayer(createReadStream(file), data, {compression: 'none'})
      const [x, y] = await Promise.all([fs.lstat(path.join(data, 'a/x')), fs.lstat(path.join(data, 'b/y'))])
      expect(x.isFile() && x.nlink).to.equal(1)
      expect(y.isCharacterDevice() && y.rdev).to.equal(0)
    })

    it('a later entry replaces an earlier one of another kind within a layer, as GNU tar does', async () => {
      const tar = rawTar([
        {content: 'was a file\n', name: 'a'},
        {name: 'a/', type: '5'},
        {content: 'in a\n', name: 'a/in'},
        {link: 'nowhere', name: 's', type: '2'},
        {name: 's/', type: '5'},
        {name: 'e/', type: '5'},
        {content: 'now a file\n', name: 'e'},
      ])
      const file = path.join(box.root, 'layer.tar')
      await fs.writeFile(file, tar)
      const ours = path.join(box.root, 'ours')
      const gnu = path.join(box.root, 'gnu')
      await fs.mkdir(ours)
      await fs.mkdir(gnu)
      await unpackLayer(createReadStream(file), ours, {compression: 'none'})
      await execa('tar', ['-xf', file, '-C', gnu, '--same-owner', '--same-permissions'])
      expect(await treeListing(ours)).to.deep.equal(await treeListing(gnu))
    })
  })

  it('a layer of 10,000 nested directories unpacks, and its deepest directory is there', async function () {
    async function* nested(): AsyncGenerator<Buffer> {
      let name = ''
      for (let i = 0; i < 10_000; i++) {
        name += 'd/'
        yield encodeHeader({
          gid: 0,
          mode: 0o750,
          mtime: 1_500_000_000,
          name: Buffer.from(name),
          size: 0,
          typeflag: '5',
          uid: 0,
        })
      }

      yield Buffer.alloc(2 * BLOCK)
    }

    const data = path.join(box.root, 'data')
    await fs.mkdir(data)
    try {
      const result = await unpackLayer(Readable.from(nested()), data, {compression: 'none'})
      expect(result.entries).to.equal(10_000)
      const {stdout} = await execa('find', [data, '-type', 'd', '-perm', '0750', '-mindepth', '1'], {
        lines: true,
      } as never)
      expect((stdout as unknown as string[]).length).to.equal(10_000)
    } finally {
      // Deeper than PATH_MAX: Node's recursive rm cannot delete it; GNU rm can.
      await execa('rm', ['-rf', data])
    }
  })

  it('a refused layer 2,040 directories deep leaves no stage behind, and the next create sweeps one a kill -9 left', async function () {
    // Deeper than PATH_MAX as the store names it: a removal by path (Node's recursive rm) fails.
    // Every directory of the chain listed, as a tar program writes them, then an entry refused.
    const chain: Spec[] = Array.from({length: 2040}, (_, i) => ({name: 'd/'.repeat(i + 1), type: '5'}))
    const refused: Spec = {link: '../outside', name: `${'d/'.repeat(2040)}x`, type: '1'}
    await pullRefused([rawTar([...chain, refused])], /has "\.\." in its hard link target/)
    const left = async () =>
      (await fs.readdir(box.wafers).catch(() => [] as string[])).filter(
        (entry) => entry.startsWith('.create-') || entry.startsWith('.rm-'),
      )
    expect(await left(), 'stages left by the refused pull').to.deep.equal([])
    const tmp = path.join(box.wafers, '.oci', 'tmp')
    expect(await fs.readdir(tmp).catch(() => []), 'pull directories left').to.deep.equal([])

    // What a killed create leaves: a stage nobody holds, as deep.
    const stage = path.join(box.wafers, '.create-ghost-0123456789ab')
    await python(
      `import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for name in ['data'] + ['d'] * 2040:
    os.mkdir(name, dir_fd=fd)
    next = os.open(name, os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = next
`,
      await fs.mkdir(stage, {recursive: true}).then(() => stage),
    )
    const run = await box.run(['create', 'next'])
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(await left(), 'stages left after the next create').to.deep.equal([])

    // And a wafer as deep, pulled whole, goes with rm.
    const layout = path.join(box.root, 'deep-layout')
    await writeLayoutOfTars(layout, 'v1', [rawTar(chain)])
    const pulled = await box.run(['pull', `oci:${layout}:v1`, 'deep'])
    expect(pulled.exitCode, pulled.stderr).to.equal(0)
    const layer = (await wafersIn(box)).find((name) => name.startsWith('layer-')) as string
    const removed = await box.run(['rm', '--yes', '--recursive', layer])
    expect(removed.exitCode, removed.stderr).to.equal(0)
    expect(await wafersIn(box)).to.deep.equal(['next'])
    expect(await left(), 'trash left by rm').to.deep.equal([])
  })

  it('stops a decompression bomb with a sentence when the store would fill up', async () => {
    const store = path.join(box.root, 'small')
    await fs.mkdir(store)
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=96m', 'tmpfs', store])
    const blob = path.join(box.root, 'bomb.tar.gz')
    const gzip = createGzip()
    const writing = (await import('node:stream/promises')).pipeline(
      gzip,
      (await import('node:fs')).createWriteStream(blob),
    )
    const size = 200 * 1024 * 1024
    gzip.write(encodeHeader({gid: 0, mode: 0o644, mtime: 0, name: Buffer.from('zeros'), size, typeflag: '0', uid: 0}))
    const mib = Buffer.alloc(1024 * 1024)
    for (let i = 0; i < 200; i++) if (!gzip.write(mib)) await new Promise((resolve) => gzip.once('drain', resolve))
    gzip.end(Buffer.alloc(2 * BLOCK))
    await writing
    const data = path.join(store, 'data')
    await fs.mkdir(data)

    const error = await unpackLayer(createReadStream(blob), data, {compression: 'gzip', name: 'layer 1 of 1'}).catch(
      (error_: unknown) => error_,
    )

    expect(error).to.be.instanceOf(WafersError)
    expect((error as Error).message).to.equal(
      `layer 1 of 1 was stopped at its entry "zeros": unpacking it would leave less than 64 MiB free on the store's file system.`,
    )
  })

  it('reads every tar as GNU tar and tarfile both do, and refuses where they disagree (property)', async function () {
    const names = fc.constantFrom(
      'a',
      'b',
      'a/b',
      './a',
      'a/',
      'c/d/e',
      'x'.repeat(120),
      `${'y'.repeat(60)}/${'z'.repeat(60)}`,
    )
    // Pax records as written right, and as readers read two ways: extra blanks, no '=', a wrong
    // length, a duplicate key.
    const record = fc.oneof(
      {
        arbitrary: fc
          .tuple(fc.constantFrom('path', 'linkpath', 'mtime', 'comment', 'size', 'SCHILY.xattr.user.a', 'uid'), names)
          .map(([key, value]) =>
            paxRecord(key, key === 'mtime' || key === 'uid' ? '12' : key === 'size' ? '0' : value),
          ),
        weight: 6,
      },
      names.map((value) => sized(`  path=${value}\n`)),
      names.map((value) => sized(` path${value}\n`)),
      names.map((value) => sized(` path =${value}\n`)),
      names.map((value) => Buffer.from(`99 path=${value}\n`)),
      names.map((value) => Buffer.concat([paxRecord('path', value), paxRecord('path', 'other')])),
    )
    // Hard links mostly to names the same tar may well have made.
    const target = fc.constantFrom('a', 'b', 'a/b', 'c/d/e')
    const spec = fc.record({
      content: fc.constantFrom('', 'data\n'),
      link: fc.oneof(names, target),
      name: names,
      pax: fc.option(
        fc.array(record, {maxLength: 3, minLength: 1}).map((records) => Buffer.concat(records)),
        {
          freq: 2,
          nil: undefined,
        },
      ),
      type: fc.constantFrom('0', '0', '0', '5', '5', '2', '1'),
    })
    const tars = fc
      .sample(fc.array(spec, {maxLength: 5, minLength: 1}), {numRuns: 100, seed: 4242})
      .map((specs) => rawTar(specs.map((s) => ({...s, content: s.type === '0' ? s.content : ''}))))
    const dir = path.join(box.root, 'tars')
    await fs.mkdir(dir)
    const files = await Promise.all(
      tars.map(async (tar, i) => {
        const file = path.join(dir, `${i}.tar`)
        await fs.writeFile(file, tar)
        return file
      }),
    )

    const norm = (name: string) => name.replace(/^(\.\/)+/, '').replace(/\/+$/, '')
    const python3 = JSON.parse(
      await python(
        `import json, sys, tarfile
out = []
for f in sys.argv[1:]:
    try:
        with tarfile.open(f, 'r:') as t:
            out.append([[m.name, 'd' if m.isdir() else 'l' if m.issym() else 'h' if m.islnk() else 'f'] for m in t.getmembers()])
    except Exception as e:
        out.append(None)
print(json.dumps(out))`,
        ...files,
      ),
    ) as ([string, string][] | null)[]
    let accepted = 0
    let disagreed = 0
    for (const [i, file] of files.entries()) {
      const gnu = await execa('tar', ['-tvf', file, '--quoting-style=literal'], {reject: false})
      const gnuList =
        gnu.exitCode === 0
          ? gnu.stdout
              .split('\n')
              .filter((line) => line !== '')
              .map((line) => {
                const match = /^(\S)\S*\s+\S+\s+\S+\s+\S+\s+\S+\s+(.*?)(?: -> .*| link to .*)?$/.exec(line)!
                return `${norm(match[2])} ${match[1] === '-' ? 'f' : match[1]}`
              })
          : undefined
      const pyList = python3[i]?.map(([name, type]) => `${norm(name)} ${type}`)
      let ours: string[] | undefined = []
      try {
        for await (const entry of readTar(createReadStream(file), {layer: false, name: 'tar'})) {
          const type = {dir: 'd', file: 'f', link: 'h', symlink: 'l'}[entry.type as string] ?? '?'
          ours.push(`${norm(entry.raw.toString())} ${type}`)
        }
      } catch (error) {
        if (!(error instanceof WafersError)) throw error
        if (process.env.WAFERS_TEST_VERBOSE) console.log(error.message)
        ours = undefined
      }

      if (JSON.stringify(gnuList) !== JSON.stringify(pyList)) disagreed++
      if (ours === undefined) continue
      accepted++
      expect(gnuList, `GNU tar lists tar ${i} wafers accepted`).to.deep.equal(ours)
      expect(pyList, `tarfile lists tar ${i} wafers accepted`).to.deep.equal(ours)
    }

    // A generator that only made tars wafers refuses, or none the two read differently, would prove nothing.
    expect(accepted).to.be.above(10)
    expect(disagreed).to.be.above(0)
  })
})
