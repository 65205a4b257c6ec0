import {expect} from 'chai'
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {createReadStream, promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../../src/lib/errors.js'
import {compressionOf, isEmptyLayer, layerFingerprint, packLayer, unpackLayer} from '../../src/lib/layer/archive.js'
import {encodeHeader} from '../../src/lib/layer/tar/header.js'
import {readLayout, writeLayout} from '../helpers/layout.js'
import {Sandbox, nspawnIn, requireMounts, snapshot} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'
import {UMOCI_IMAGE_FEATURES, makeUmociImage} from '../helpers/umoci.js'

/** A small tree with what layers carry: owners, setuid, links, a device, xattrs, old mtimes. */
async function makeTree(dir: string): Promise<void> {
  await fs.mkdir(path.join(dir, 'etc/sub'), {recursive: true})
  await fs.writeFile(path.join(dir, 'etc/hostname'), 'wafer\n')
  await fs.writeFile(path.join(dir, 'etc/sub/owned'), 'mine\n')
  await fs.chown(path.join(dir, 'etc/sub/owned'), 1234, 5678)
  await fs.writeFile(path.join(dir, 'suid'), '#!/bin/sh\n')
  await fs.chmod(path.join(dir, 'suid'), 0o4755)
  await fs.link(path.join(dir, 'etc/hostname'), path.join(dir, 'etc/hardlink'))
  await fs.symlink('../etc/hostname', path.join(dir, 'etc/sub/link'))
  await execa('mknod', ['-m', '0640', path.join(dir, 'null'), 'c', '1', '3'])
  await execa('setfattr', ['-n', 'user.color', '-v', 'blue', path.join(dir, 'etc/hostname')])
  await execa('setfattr', ['-n', 'trusted.note', '-v', 'kept', path.join(dir, 'etc/sub')])
  await execa('touch', ['-h', '-d', '2021-02-03 04:05:06', path.join(dir, 'etc/sub/link')])
  // Names and targets longer than ustar's 100 bytes, and a FIFO.
  await fs.mkdir(path.join(dir, 'long'))
  await fs.writeFile(path.join(dir, 'long', 'x'.repeat(120)), 'long name\n')
  await fs.symlink(`../${'y'.repeat(150)}`, path.join(dir, 'long/target'))
  await execa('mkfifo', ['-m', '0600', path.join(dir, 'fifo')])
  for (const file of ['etc/hostname', 'etc/sub/owned', 'etc/sub', 'etc', 'suid', 'null', 'long', 'fifo']) {
    await execa('touch', ['-d', '2020-01-02 03:04:05', path.join(dir, file)])
  }
}

async function gnuTar(dir: string, output: string, compress?: string): Promise<void> {
  const args = ['--create', '--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name']
  await execa('tar', [
    ...args,
    ...(compress ? [`--use-compress-program=${compress}`] : []),
    '-C',
    dir,
    '-f',
    output,
    '.',
  ])
}

async function sha256Of(file: string): Promise<string> {
  const {stdout} = await execa('sha256sum', [file])
  return `sha256:${stdout.split(' ')[0]}`
}

/** An uncompressed tar of the given entries, with `content` as file data. */
function tarOf(
  entries: {
    content?: string
    link?: string
    name: string
    type: '0' | '1' | '2' | '5'
    mode?: number
    uid?: number
    mtime?: number
  }[],
): Buffer {
  const parts: Buffer[] = []
  for (const entry of entries) {
    const content = Buffer.from(entry.content ?? '')
    parts.push(
      encodeHeader({
        gid: 0,
        linkname: entry.link === undefined ? undefined : Buffer.from(entry.link),
        mode: entry.mode ?? (entry.type === '5' ? 0o755 : 0o644),
        mtime: entry.mtime ?? 1_600_000_000,
        name: Buffer.from(entry.name),
        size: content.length,
        typeflag: entry.type,
        uid: entry.uid ?? 0,
      }),
      content,
      Buffer.alloc((512 - (content.length % 512)) % 512),
    )
  }

  return Buffer.concat([...parts, Buffer.alloc(1024)])
}

describe('OCI layer archives', () => {
  let box: Sandbox

  beforeEach(async function () {
    requireMounts(this)
    box = await Sandbox.create()
  })

  afterEach(async () => box?.cleanup())

  describe('unpackLayer', () => {
    for (const [compression, program] of [
      ['gzip', 'gzip'],
      ['zstd', 'zstd'],
      ['none', undefined],
    ] as const) {
      it(`unpacks a ${compression} layer with owners, modes, links, devices, xattrs and mtimes`, async () => {
        const source = path.join(box.root, 'source')
        const data = path.join(box.root, 'data')
        const blob = path.join(box.root, 'layer.blob')
        const tarFile = path.join(box.root, 'layer.tar')
        await fs.mkdir(source)
        await fs.mkdir(data)
        await makeTree(source)
        await gnuTar(source, tarFile)
        if (program) await execa(program, ['-c', tarFile], {stdout: {file: blob}})
        else await fs.copyFile(tarFile, blob)
        const digest = await sha256Of(blob)
        const diffId = await sha256Of(tarFile)

        const result = await unpackLayer(createReadStream(blob), data, {
          compression,
          expectDiffId: diffId,
          expectDigest: digest,
          name: 'the test layer',
        })

        expect(result).to.deep.equal({diffId, digest, entries: 13})
        expect(await treeListing(data)).to.deep.equal(await treeListing(source))
      })
    }

    it('refuses a directory that is not empty, touching nothing', async () => {
      const data = path.join(box.root, 'data')
      await fs.mkdir(data)
      await fs.writeFile(path.join(data, 'there'), 'before\n')
      const tar = path.join(box.root, 'layer.tar')
      await fs.writeFile(tar, tarOf([{content: 'new\n', name: 'there', type: '0'}]))

      const error = await unpackLayer(createReadStream(tar), data, {compression: 'none'}).catch(
        (error_: unknown) => error_,
      )

      expect(error)
        .to.be.instanceOf(WafersError)
        .with.property('message', `${data} is not empty; a layer unpacks only into a new, empty directory.`)
      expect(await fs.readFile(path.join(data, 'there'), 'utf8')).to.equal('before\n')
    })

    it('escapes the overlayfs attributes a layer carries (no mount acts on them) and keeps the others', async () => {
      const data = path.join(box.root, 'data')
      await fs.mkdir(data)
      const tar = path.join(box.root, 'layer.tar')
      const xattrs: [string, Buffer][] = [
        ['trusted.overlay.redirect', Buffer.from('/etc')],
        ['user.keep', Buffer.from('yes')],
      ]
      const header = encodeHeader({
        gid: 0,
        mode: 0o755,
        mtime: 1_500_000_000,
        name: Buffer.from('d/'),
        size: 0,
        typeflag: '5',
        uid: 0,
        xattrs,
      })
      await fs.writeFile(tar, Buffer.concat([header, Buffer.alloc(1024)]))

      await unpackLayer(createReadStream(tar), data, {compression: 'none'})

      expect(await treeListing(data, {overlayXattrs: true})).to.deep.equal([
        `d d 0755 0:0 trusted.overlay.overlay.redirect=${Buffer.from('/etc').toString('base64')} user.keep=${Buffer.from('yes').toString('base64')} mtime=1500000000`,
      ])
    })

    it('turns OCI whiteouts into overlayfs whiteouts and opaque directories', async () => {
      const source = path.join(box.root, 'source')
      const data = path.join(box.root, 'data')
      await fs.mkdir(path.join(source, 'gone-from'), {recursive: true})
      await fs.mkdir(path.join(source, 'hidden'))
      await fs.writeFile(path.join(source, 'gone-from/.wh.old'), '')
      await fs.writeFile(path.join(source, 'hidden/.wh..wh..opq'), '')
      await fs.writeFile(path.join(source, 'hidden/new'), 'new\n')
      await execa('touch', ['-d', '2020-01-02 03:04:05', path.join(source, 'gone-from'), path.join(source, 'hidden')])
      await fs.mkdir(data)
      const tarFile = path.join(box.root, 'layer.tar')
      await gnuTar(source, tarFile)

      await unpackLayer(createReadStream(tarFile), data, {compression: 'none'})

      expect(await treeListing(data, {overlayXattrs: true})).to.deep.equal([
        'gone-from d 0755 0:0 mtime=1577934245',
        `gone-from/old c 0644 0:0 0:0 mtime=${Math.floor((await fs.lstat(path.join(source, 'gone-from/.wh.old'))).mtimeMs / 1000)}`,
        `hidden d 0755 0:0 trusted.overlay.opaque=${Buffer.from('y').toString('base64')} mtime=1577934245`,
        `hidden/new f 0644 0:0 4B sha256:${(await sha256Of(path.join(source, 'hidden/new'))).slice(7)} mtime=${Math.floor((await fs.lstat(path.join(source, 'hidden/new'))).mtimeMs / 1000)}`,
      ])
    })

    it('marks a directory opaque when its .wh..wh..opq comes before the directory, or alone, or at the root', async () => {
      const data = path.join(box.root, 'data')
      await fs.mkdir(data)
      const tar = path.join(box.root, 'layer.tar')
      await fs.writeFile(
        tar,
        tarOf([
          {name: 'late/.wh..wh..opq', type: '0'},
          {mode: 0o700, mtime: 1_500_000_000, name: 'late/', type: '5', uid: 1234},
          {content: 'x', mtime: 1_500_000_000, name: 'late/file', type: '0'},
          {name: 'nodir/.wh..wh..opq', type: '0'},
          {name: './.wh..wh..opq', type: '0'},
        ]),
      )

      const result = await unpackLayer(createReadStream(tar), data, {compression: 'none'})

      const y = Buffer.from('y').toString('base64')
      expect(result.entries).to.equal(5)
      const {stdout: rootOpaque} = await execa('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', data])
      expect(rootOpaque).to.equal('y')
      // And back: packed, the opaque marks come out as .wh..wh..opq entries, the root's first after "./".
      const blob = path.join(box.root, 'repacked.tar.gz')
      await packLayer(data, blob)
      const {stdout: names} = await execa('tar', ['-tzf', blob])
      expect(names.split('\n')).to.deep.equal([
        './',
        '.wh..wh..opq',
        'late/',
        'late/.wh..wh..opq',
        'late/file',
        'nodir/',
        'nodir/.wh..wh..opq',
      ])
      expect(await treeListing(data, {overlayXattrs: true})).to.deep.equal([
        `late d 0700 1234:0 trusted.overlay.opaque=${y} mtime=1500000000`,
        `late/file f 0644 0:0 1B sha256:${createHash('sha256').update('x').digest('hex')} mtime=1500000000`,
        // Not listed, no layer below: the default owner and mode, and a fixed time.
        `nodir d 0755 0:0 trusted.overlay.opaque=${y} mtime=0`,
      ])
    })
  })

  describe('packLayer', () => {
    it('packs a tree that GNU tar and unpackLayer both extract to the same tree', async () => {
      const source = path.join(box.root, 'source')
      await fs.mkdir(source)
      await makeTree(source)
      const blob = path.join(box.root, 'layer.tar.gz')

      const packed = await packLayer(source, blob)

      for (const how of ['gnu tar', 'unpackLayer']) {
        const data = path.join(box.root, how.replace(' ', '-'))
        await fs.mkdir(data)
        await (how === 'gnu tar'
          ? execa('tar', ['-xzf', blob, '--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', data])
          : unpackLayer(createReadStream(blob), data, {
              compression: 'gzip',
              expectDiffId: packed.diffId,
              expectDigest: packed.digest,
            }))
        expect(await treeListing(data), how).to.deep.equal(await treeListing(source))
      }

      const {stdout} = await execa('tar', ['-tzf', blob])
      expect(stdout.split('\n').slice(0, 5)).to.deep.equal(['./', 'etc/', 'etc/hardlink', 'etc/hostname', 'etc/sub/'])
      const again = await packLayer(source, blob).catch((error: unknown) => error)
      expect(again)
        .to.be.instanceOf(WafersError)
        .with.property('message', `${blob} already exists; packLayer writes a new file.`)
    })

    it('round-trips the root and a whiteout: mode, owner and mtime to the microsecond', async () => {
      const source = path.join(box.root, 'source')
      const data = path.join(box.root, 'data')
      await fs.mkdir(source)
      await fs.mkdir(data)
      await fs.writeFile(path.join(source, 'file'), 'x\n')
      await execa('mknod', ['-m', '0640', path.join(source, 'gone'), 'c', '0', '0'])
      await fs.lchown(path.join(source, 'gone'), 1234, 5678)
      await execa('touch', ['-h', '-d', '@1000000000.123456789', path.join(source, 'gone')])
      await fs.chmod(source, 0o750)
      await execa('touch', ['-d', '@1100000000.987654321', source])
      const blob = path.join(box.root, 'layer.tar.gz')
      await packLayer(source, blob)
      // Packed to the nearest microsecond: what an unpack can set again exactly (layer/tar/writer.ts).
      const {stdout} = await execa('tar', ['--list', '--verbose', '--full-time', '--file', blob], {env: {TZ: 'UTC'}})
      expect(stdout.split('\n')[0]).to.match(/^drwxr-x--- 0\/0 +0 2004-11-09 11:33:20\.987654 \.\/$/)
      await unpackLayer(createReadStream(blob), data, {compression: 'gzip', name: 'layer 1 of 1'})
      const [before, after] = await Promise.all([fs.lstat(source, {bigint: true}), fs.lstat(data, {bigint: true})])
      expect(after.mode).to.equal(before.mode)
      // Times are kept at a fixed point of whole microseconds (see layer/unpack.ts): exactly on Node
      // 20, within the µs on Node 24, and read back by a pack, which rounds to the µs, alike.
      const us = (ns: bigint) => (ns + 500n) / 1000n
      expect(us(after.mtimeNs)).to.equal(us(before.mtimeNs))
      const [wasGone, isGone] = await Promise.all([
        fs.lstat(path.join(source, 'gone'), {bigint: true}),
        fs.lstat(path.join(data, 'gone'), {bigint: true}),
      ])
      expect(isGone.isCharacterDevice() && isGone.rdev).to.equal(0n)
      expect([isGone.mode, isGone.uid, isGone.gid, us(isGone.mtimeNs)]).to.deep.equal([
        wasGone.mode,
        wasGone.uid,
        wasGone.gid,
        us(wasGone.mtimeNs),
      ])
    })

    it('refuses a directory overlayfs redirected, whose lower files a layer tar cannot hold', async () => {
      const source = path.join(box.root, 'source')
      await fs.mkdir(path.join(source, 'moved'), {recursive: true})
      await execa('setfattr', ['-n', 'trusted.overlay.redirect', '-v', '/old', path.join(source, 'moved')])

      const error = await packLayer(source, path.join(box.root, 'layer.tar.gz')).catch((error_: unknown) => error_)

      expect(error).to.be.instanceOf(WafersError)
      expect((error as Error).message).to.match(
        /moved carries trusted\.overlay\.redirect: overlayfs wrote it with redirect_dir/,
      )
    })

    it('refuses a file named like a whiteout, since no layer could carry it', async () => {
      const source = path.join(box.root, 'source')
      await fs.mkdir(source)
      await fs.writeFile(path.join(source, '.wh.sneaky'), '')

      const error = await packLayer(source, path.join(box.root, 'layer.tar.gz')).catch((error_: unknown) => error_)

      expect(error).to.be.instanceOf(WafersError)
      expect((error as Error).message).to.equal(
        `${source}/.wh.sneaky is named like an OCI whiteout (.wh.*), which no layer can carry as a file.`,
      )
    })
  })

  describe('hostile layers', () => {
    const cases: {entries: Parameters<typeof tarOf>[0]; refused: string; title: string}[] = [
      {entries: [{content: 'escaped\n', name: '../x', type: '0'}], refused: '../x', title: 'a ../ path'},
      {
        entries: [{content: 'escaped\n', name: 'ok/../../x', type: '0'}],
        refused: 'ok/../../x',
        title: 'a .. inside a path',
      },
      {entries: [{content: 'escaped\n', name: '/abs', type: '0'}], refused: '/abs', title: 'an absolute path'},
      {
        entries: [
          {link: 'OUTSIDE', name: 'link', type: '2'},
          {content: 'through the link\n', name: 'link/file', type: '0'},
        ],
        refused: 'link/file',
        title: 'a file through a symlink made by an earlier entry',
      },
      {
        entries: [
          {link: 'OUTSIDE', name: 'dirlink', type: '2'},
          {name: 'dirlink/sub/', type: '5'},
        ],
        refused: 'dirlink/sub/',
        title: 'a directory through a symlink made by an earlier entry',
      },
      {
        entries: [{link: '/etc/passwd', name: 'passwd', type: '1'}],
        refused: 'passwd',
        title: 'a hard link to /etc/passwd',
      },
      {
        entries: [{link: '../outside/victim', name: 'victim', type: '1'}],
        refused: 'victim',
        title: 'a hard link to ../',
      },
      {
        entries: [
          {link: 'OUTSIDE', name: 'link', type: '2'},
          {link: 'link/victim', name: 'victim', type: '1'},
        ],
        refused: 'victim',
        title: 'a hard link through a symlink made by an earlier entry',
      },
      {
        entries: [
          {link: 'OUTSIDE', name: 'link', type: '2'},
          {content: '', name: 'link/.wh.victim', type: '0'},
        ],
        refused: 'link/.wh.victim',
        title: 'a whiteout through a symlink made by an earlier entry',
      },
    ]

    for (const {entries, refused, title} of cases) {
      it(`refuses ${title}, naming the entry, and writes nothing outside the wafer`, async () => {
        const outside = path.join(box.root, 'outside')
        const data = path.join(box.root, 'wafer', 'data')
        await fs.mkdir(outside)
        await fs.mkdir(data, {recursive: true})
        await fs.writeFile(path.join(outside, 'victim'), 'untouched\n')
        const layer = tarOf(entries.map((entry) => ({...entry, link: entry.link?.replace('OUTSIDE', outside)})))
        const blob = path.join(box.root, 'hostile.tar.gz')
        await execa('gzip', ['-c'], {input: layer, stdout: {file: blob}})
        const before = await snapshot(box.root)
        const beforeEtc = await snapshot('/etc')

        const error = await unpackLayer(createReadStream(blob), data, {compression: 'gzip', name: 'layer 2 of 3'}).then(
          () => undefined,
          (error_: unknown) => error_,
        )

        expect(error).to.be.instanceOf(WafersError)
        expect((error as Error).message)
          .to.include('layer 2 of 3')
          .and.include(JSON.stringify(refused))
        const after = await snapshot(box.root)
        const outsideData = (lines: string[]) => lines.filter((line) => !line.startsWith('wafer/data/'))
        expect(outsideData(after)).to.deep.equal(outsideData(before))
        expect(await snapshot('/etc')).to.deep.equal(beforeEtc)
      })
    }

    it('refuses a blob whose bytes do not match its digest, naming the layer', async () => {
      const data = path.join(box.root, 'data')
      await fs.mkdir(data)
      const blob = path.join(box.root, 'layer.tar.gz')
      const tar = tarOf([{content: 'fine\n', name: 'file', type: '0'}])
      await execa('gzip', ['-c'], {input: tar, stdout: {file: blob}})
      const other = `sha256:${'0'.repeat(64)}`
      let seen = 0

      const error = await unpackLayer(createReadStream(blob), data, {
        compression: 'gzip',
        expectDigest: other,
        name: 'sha256:abc (layer 1 of 1)',
        onBytes(n) {
          seen = n
        },
      }).catch((error_: unknown) => error_)

      expect(error).to.be.instanceOf(WafersError)
      expect((error as Error).message).to.equal(
        `sha256:abc (layer 1 of 1) does not match its digest ${other}: its bytes hash to ${await sha256Of(blob)}.`,
      )
      expect(seen).to.equal((await fs.stat(blob)).size)
    })

    it('refuses a tar whose diffID does not match, naming the layer', async () => {
      const data = path.join(box.root, 'data')
      await fs.mkdir(data)
      const blob = path.join(box.root, 'layer.tar.zst')
      await execa('zstd', ['-c'], {input: tarOf([{content: 'fine\n', name: 'file', type: '0'}]), stdout: {file: blob}})

      const error = await unpackLayer(createReadStream(blob), data, {
        compression: 'zstd',
        expectDiffId: `sha256:${'1'.repeat(64)}`,
        expectDigest: await sha256Of(blob),
        name: 'layer 3 of 5',
      }).catch((error_: unknown) => error_)

      expect(error).to.be.instanceOf(WafersError)
      expect((error as Error).message).to.match(/^layer 3 of 5 does not match its diffID sha256:1{64}: /)
    })

    it('keeps the modes and mtimes of directories whose files come later, out of order, and of the root', async () => {
      const data = path.join(box.root, 'data')
      await fs.mkdir(data)
      const entry = (name: string, typeflag: string, mode: number, mtime: number, mtimeNs = 0, content = '') => {
        const bytes = Buffer.from(content)
        return [
          encodeHeader({gid: 0, mode, mtime, mtimeNs, name: Buffer.from(name), size: bytes.length, typeflag, uid: 0}),
          bytes,
          Buffer.alloc((512 - (bytes.length % 512)) % 512),
        ]
      }

      const tar = Buffer.concat([
        ...entry('./', '5', 0o751, 1_500_000_000, 250_000_000),
        ...entry('d/', '5', 0o555, 1_000_000_000),
        ...entry('e/', '5', 0o1777, 1_200_000_000, 500_000_000),
        ...entry('e/x', '0', 0o644, 1_300_000_000, 0, 'x\n'),
        // Written into d after e: d's mtime, set when tar left it, would change again.
        ...entry('d/f', '0', 0o644, 1_300_000_000, 0, 'f\n'),
        ...entry('d/sub/', '5', 0o700, 1_100_000_000),
        ...entry('d/sub/g', '0', 0o644, 1_300_000_000, 0, 'g\n'),
        Buffer.alloc(1024),
      ])
      const blob = path.join(box.root, 'dirs.tar')
      await fs.writeFile(blob, tar)
      await unpackLayer(createReadStream(blob), data, {compression: 'none', name: 'layer 1 of 1'})
      const stat = async (name: string) => fs.lstat(path.join(data, name), {bigint: false})
      expect(((await stat('d')).mode & 0o7777).toString(8)).to.equal('555')
      expect((await stat('d')).mtimeMs).to.equal(1_000_000_000_000)
      expect(((await stat('d/sub')).mode & 0o7777).toString(8)).to.equal('700')
      expect((await stat('d/sub')).mtimeMs).to.equal(1_100_000_000_000)
      expect(((await stat('e')).mode & 0o7777).toString(8)).to.equal('1777')
      expect((await stat('e')).mtimeMs).to.equal(1_200_000_000_500)
      expect(((await stat('.')).mode & 0o7777).toString(8)).to.equal('751')
      expect((await stat('.')).mtimeMs).to.equal(1_500_000_000_250)
    })

    it('cuts a huge entry name to 200 characters in its refusal', async () => {
      const data = path.join(box.root, 'data')
      await fs.mkdir(data)
      const name = `../${'a'.repeat(512 * 1024)}`
      const blob = path.join(box.root, 'long.tar')
      await fs.writeFile(blob, tarOf([{content: 'x', name, type: '0'}]))
      const error = await unpackLayer(createReadStream(blob), data, {compression: 'none', name: 'layer 1 of 1'}).catch(
        (error_: unknown) => error_,
      )
      expect(error).to.be.instanceOf(WafersError)
      const {message} = error as Error
      expect(message).to.include(`"${name.slice(0, 200)}"…`)
      expect(message.length).to.be.lessThan(400)
    })

    it('refuses data that is not gzip in one sentence', async () => {
      const data = path.join(box.root, 'data')
      await fs.mkdir(data)
      const blob = path.join(box.root, 'not-gzip')
      await fs.writeFile(blob, tarOf([{content: 'plain\n', name: 'file', type: '0'}]))

      const error = await unpackLayer(createReadStream(blob), data, {compression: 'gzip', name: 'layer 1 of 1'}).catch(
        (error_: unknown) => error_,
      )

      expect(error).to.be.instanceOf(WafersError)
      expect((error as Error).message).to.equal('layer 1 of 1 is not valid gzip data.')
    })
  })

  describe('an image built by umoci', () => {
    /** The layers of the layout's only image, with their diffIDs. */
    async function layersOf(layout: string): Promise<{diffId: string; digest: string; mediaType: string}[]> {
      const image = await readLayout(layout)
      const diffIds = (JSON.parse(image.config.toString()) as {rootfs: {diff_ids: string[]}}).rootfs.diff_ids
      return image.layers.map((layer, i) => ({diffId: diffIds[i], digest: layer.digest, mediaType: layer.mediaType}))
    }

    /** Unpacks each layer of the layout into wafers PREFIX0, PREFIX1, ... each on the one before. */
    async function unpackChain(layout: string, prefix: string): Promise<string[]> {
      const names: string[] = []
      for (const [i, layer] of (await layersOf(layout)).entries()) {
        const name = `${prefix}${i}`
        await box.wafer(name, {parent: names.at(-1)})
        await unpackLayer(createReadStream(path.join(layout, 'blobs/sha256', layer.digest.slice(7))), box.data(name), {
          compression: compressionOf(layer.mediaType),
          expectDiffId: layer.diffId,
          expectDigest: layer.digest,
          name: layer.digest,
        })
        names.push(name)
      }

      return names
    }

    /** Writes an OCI layout holding one image, tagged `packed`, of the given gzip layers. */
    async function writePacked(layout: string, layers: {diffId: string; file: string}[]) {
      const bytes = await Promise.all(layers.map(async (layer) => fs.readFile(layer.file)))
      await writeLayout(layout, 'packed', {
        diffIds: layers.map((layer) => layer.diffId),
        layers: bytes.map((blob) => ({bytes: blob, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip'})),
      })
    }

    it('unpacks into chained wafers that stack to what umoci unpack makes, file for file', async () => {
      const layout = path.join(box.root, 'layout')
      await makeUmociImage(layout, 'test')
      const chain = await unpackChain(layout, 'layer')
      expect(chain).to.have.length(3)

      const stacked = await box.run(['stack', 'image', chain.at(-1)!])
      expect(stacked.stderr).to.not.match(/error/i)
      expect(stacked.exitCode).to.equal(0)
      const bundle = path.join(box.root, 'bundle')
      await execa('umoci', ['unpack', '--image', `${layout}:test`, bundle])

      const ours = await treeListing(box.stack('image'))
      expect(ours).to.deep.equal(await treeListing(path.join(bundle, 'rootfs')))
      // The comparison covers what the image was built to carry.
      const line = (file: string) => ours.find((entry) => entry.startsWith(`${file} `)) ?? ''
      const {device, hardLinks, opaque, owned, setuid, symlink, xattrs} = UMOCI_IMAGE_FEATURES
      expect(line(device)).to.match(/ c 0666 0:0 1:5 /)
      expect(line(setuid)).to.match(/ f 4755 0:0 /)
      expect(line(owned)).to.match(/ f 0640 1234:5678 /)
      expect(line(symlink)).to.include(' -> ../etc/hostname')
      expect(line(xattrs))
        .to.include(' security.capability=')
        .and.include(' trusted.wafers=')
        .and.include(' user.color=')
      expect(line(hardLinks[1])).to.include(`links=${hardLinks[0]}`)
      expect(line(hardLinks[3])).to.include(`links=${hardLinks[2]}`)
      expect(ours.filter((entry) => entry.startsWith(`${opaque}/`)).map((entry) => entry.split(' ')[0])).to.deep.equal([
        `${opaque}/new1`,
      ])
      for (const gone of UMOCI_IMAGE_FEATURES.deleted) expect(line(gone)).to.equal('')
      expect(line('gone/file2')).to.not.equal('')
      expect((await fs.lstat(box.data('layer1', 'gone/file1'))).rdev).to.equal(0)
      expect((await fs.lstat(box.data('layer1', 'gone/file1'))).isCharacterDevice()).to.equal(true)

      const hostname = await nspawnIn(box.stack('image'), ['/bin/cat', '/etc/hostname'])
      expect(hostname.stdout.trim()).to.equal('umoci layer 2')
      expect(hostname.exitCode).to.equal(0)
    })

    it('packs wafers into reproducible layers that unpack, stack and umoci-unpack to the same tree', async () => {
      const layout = path.join(box.root, 'layout')
      await makeUmociImage(layout, 'test')
      const chain = await unpackChain(layout, 'layer')
      expect(await isEmptyLayer(box.data('layer0'))).to.equal(false)
      await box.wafer('empty', {parent: 'layer2'})
      expect(await isEmptyLayer(box.data('empty'))).to.equal(true)
      await execa('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', box.data('empty')])
      expect(await isEmptyLayer(box.data('empty')), 'an opaque root hides the layers below').to.equal(false)

      const blobs = path.join(box.root, 'blobs')
      await fs.mkdir(blobs)
      const packed = []
      for (const name of chain) {
        const file = path.join(blobs, name)
        const fingerprint = await layerFingerprint(box.data(name))
        const result = await packLayer(box.data(name), file)
        expect(result.mediaType).to.equal('application/vnd.oci.image.layer.v1.tar+gzip')
        expect(result.digest).to.equal(await sha256Of(file))
        expect(result.size).to.equal((await fs.stat(file)).size)
        // Packing reads without changing what the fingerprint sees.
        expect(await layerFingerprint(box.data(name))).to.equal(fingerprint)
        // Packing again, also after a new atime on every file, gives the same bytes.
        await execa('find', [box.data(name), '-type', 'f', '-exec', 'touch', '-a', '{}', '+'])
        const again = await packLayer(box.data(name), `${file}.again`)
        expect(again).to.deep.equal(result)
        packed.push({...result, file})
      }

      // Whiteouts and the opaque directory went back to OCI's .wh. entries.
      const {stdout: listing2} = await execa('tar', ['-tvzf', packed[1].file])
      expect(listing2).to.match(/^-\S+ 0\/0 +0 .* gone\/\.wh\.file1$/m)
      expect(listing2)
        .to.match(/ \.wh\.gone-dir$/m)
        .and.match(/ \.wh\.gone-too$/m)
      const {stdout: listing3} = await execa('tar', ['-tvzf', packed[2].file])
      expect(listing3.split('\n').map((line) => line.split(' ').at(-1))).to.deep.equal([
        './',
        'opaque/',
        'opaque/.wh..wh..opq',
        'opaque/new1',
      ])

      // A changed file changes the fingerprint.
      const before = await layerFingerprint(box.data('layer2'))
      await execa('touch', ['-m', box.data('layer2', 'opaque/new1')])
      expect(await layerFingerprint(box.data('layer2'))).to.not.equal(before)
      await execa('touch', ['-m', '-d', '2021-07-08 09:10:11', box.data('layer2', 'opaque/new1')])

      // Unpacked again into fresh wafers, the layers stack to the same tree.
      await box.run(['stack', 'image', 'layer2']).then((run) => expect(run.exitCode).to.equal(0))
      const repacked = path.join(box.root, 'repacked')
      await writePacked(repacked, packed)
      const again = await unpackChain(repacked, 'again')
      await box.run(['stack', 'image-again', again.at(-1)!]).then((run) => expect(run.exitCode).to.equal(0))
      const original = await treeListing(box.stack('image'))
      expect(await treeListing(box.stack('image-again'))).to.deep.equal(original)

      // umoci, an implementation independent of ours, reads the packed layers the same.
      const bundle = path.join(box.root, 'bundle')
      await execa('umoci', ['unpack', '--image', `${repacked}:packed`, bundle])
      expect(await treeListing(path.join(bundle, 'rootfs'))).to.deep.equal(original)
    })
  })
})
