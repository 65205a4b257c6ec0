import {expect} from 'chai'
import {execa} from 'execa'
import {createReadStream, promises as fs} from 'node:fs'
import path from 'node:path'

import {compressionOf, unpackLayer} from '../../src/lib/oci/archive.js'
import {WafersError} from '../../src/lib/errors.js'
import {Sandbox, requireMounts} from '../helpers/sandbox.js'
import {treeListing} from '../helpers/tree.js'

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
  for (const file of ['etc/hostname', 'etc/sub/owned', 'etc/sub', 'etc', 'suid', 'null']) {
    // eslint-disable-next-line no-await-in-loop
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

describe('OCI layer archives', () => {
  let box: Sandbox
  beforeEach(async function () {
    requireMounts(this)
    box = await Sandbox.create()
  })
  afterEach(async () => box?.cleanup())

  describe('compressionOf', () => {
    it('reads OCI and Docker layer media types', () => {
      expect(compressionOf('application/vnd.oci.image.layer.v1.tar+gzip')).to.equal('gzip')
      expect(compressionOf('application/vnd.oci.image.layer.v1.tar+zstd')).to.equal('zstd')
      expect(compressionOf('application/vnd.oci.image.layer.v1.tar')).to.equal('none')
      expect(compressionOf('application/vnd.docker.image.rootfs.diff.tar.gzip')).to.equal('gzip')
    })

    it('refuses foreign and unknown layer types in one sentence', () => {
      expect(() => compressionOf('application/vnd.docker.image.rootfs.foreign.diff.tar.gzip'))
        .to.throw(WafersError)
        .with.property('message')
        .that.matches(/non-distributable \(foreign\) layer/)
      expect(() => compressionOf('application/vnd.oci.image.layer.v1.tar+lz4')).to.throw(WafersError, /tar\+lz4/)
    })
  })

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

        expect(result).to.deep.equal({diffId, digest, entries: 9})
        expect(await treeListing(data)).to.deep.equal(await treeListing(source))
      })
    }

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
        `gone-from/old c 0000 0:0 0:0 mtime=${Math.floor((await fs.lstat(path.join(source, 'gone-from/.wh.old'))).mtimeMs / 1000)}`,
        `hidden d 0755 0:0 trusted.overlay.opaque=${Buffer.from('y').toString('base64')} mtime=1577934245`,
        `hidden/new f 0644 0:0 4B sha256:${(await sha256Of(path.join(source, 'hidden/new'))).slice(7)} mtime=${Math.floor((await fs.lstat(path.join(source, 'hidden/new'))).mtimeMs / 1000)}`,
      ])
    })
  })
})
