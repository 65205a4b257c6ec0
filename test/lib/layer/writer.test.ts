import {expect} from 'chai'
import {execFileSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {mkdirSync, mkdtempSync, readFileSync, rmSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {gunzipSync} from 'node:zlib'

import {WafersError} from '../../../src/lib/errors.js'
import {packLayer} from '../../../src/lib/layer/archive.js'
import {packedTime} from '../../../src/lib/layer/tar/writer.js'
import {requireMounts} from '../../helpers/sandbox.js'

/** One entry of a tar as python3's tarfile reads it. */
interface Member {
  devmajor: number
  devminor: number
  gid: number
  linkname: string
  mode: number
  /** The pax mtime record as written, or the ustar seconds when there is none. */
  mtime: string
  name: string
  size: number
  type: string
  uid: number
  uname: string
  xattrs: Record<string, string>
}

/** The entries of a (gzipped) tar, read by python3's tarfile, in order. */
function readTar(file: string): Member[] {
  const script = `
import json, sys, tarfile
out = []
with tarfile.open(sys.argv[1]) as tar:
    for m in tar:
        out.append({'name': m.name + '/' if m.isdir() else m.name, 'type': m.type.decode(),
            'mode': m.mode, 'uid': m.uid, 'gid': m.gid, 'uname': m.uname, 'size': m.size, 'linkname': m.linkname,
            'devmajor': m.devmajor, 'devminor': m.devminor,
            'mtime': m.pax_headers.get('mtime', str(int(m.mtime))),
            'xattrs': {k[len('SCHILY.xattr.'):]: v for k, v in m.pax_headers.items() if k.startswith('SCHILY.xattr.')}})
print(json.dumps(out))
`
  return JSON.parse(execFileSync('python3', ['-c', script, file], {encoding: 'utf8'})) as Member[]
}

/** A tar written by python3's tarfile (GNU tar extracts it into the wafer): the plain part of the tree. */
function sourceTar(file: string): void {
  const script = `
import io, sys, tarfile
def entry(name, type, mode=0o755, uid=0, gid=0, data=b'', **kw):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.size, info.mtime = type, mode, uid, gid, len(data), 1000
    for key, value in kw.items(): setattr(info, key, value)
    return info, io.BytesIO(data) if data else None
with tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT) as tar:
    for info, data in [
        entry('bin', tarfile.DIRTYPE),
        entry('bin/su', tarfile.REGTYPE, 0o4755, data=b'su'),
        entry('bin/sh', tarfile.SYMTYPE, 0o777, linkname='dash'),
        entry('dev', tarfile.DIRTYPE),
        entry('dev/null', tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3),
        entry('dev/fifo', tarfile.FIFOTYPE, 0o600),
        entry('etc', tarfile.DIRTYPE),
        entry('etc/opq', tarfile.DIRTYPE),
        entry('etc/opq/kept', tarfile.REGTYPE, 0o644, data=b'kept'),
        entry('etc/passwd', tarfile.REGTYPE, 0o644, 1000, 1001, b'root:x:0:0\\n',
              pax_headers={'SCHILY.xattr.user.note': 'hello'}),
        entry('etc/passwd-link', tarfile.LNKTYPE, 0o644, 1000, 1001, linkname='etc/passwd'),
        entry('var', tarfile.DIRTYPE),
        entry('var/escaped', tarfile.DIRTYPE),
        entry('var/uopq', tarfile.DIRTYPE),
        entry('var/uopq/file', tarfile.REGTYPE, 0o644, data=b'file'),
    ]:
        tar.addfile(info, data)
`
  execFileSync('python3', ['-c', script, file])
}

const setfattr = (file: string, name: string, value: string) =>
  execFileSync('setfattr', ['-n', name, '-v', value, file])
const touch = (file: string, at: string) => execFileSync('touch', ['-h', '-d', `@${at}`, file])

describe('packing a wafer into a layer tar', function () {
  let root: string
  let data: string

  before(function () {
    requireMounts(this) // root, for trusted.* attributes and mknod
  })

  beforeEach(function () {
    root = mkdtempSync(path.join(os.tmpdir(), 'wafers-pack-'))
    data = path.join(root, 'data')
    mkdirSync(data)
  })

  afterEach(function () {
    rmSync(root, {force: true, recursive: true})
  })

  /** The tree above, extracted by GNU tar, with overlayfs's markers added as a mount would leave them. */
  function makeWafer(): void {
    const tar = path.join(root, 'source.tar')
    sourceTar(tar)
    execFileSync('tar', ['-x', '-f', tar, '-C', data, '--xattrs', '--xattrs-include=*', '--numeric-owner', '-p'])
    const at = (rel: string) => path.join(data, rel)
    execFileSync('mknod', [at('gone'), 'c', '0', '0'])
    setfattr(data, 'trusted.overlay.opaque', 'y')
    setfattr(at('etc/opq'), 'trusted.overlay.opaque', 'y')
    setfattr(at('etc/opq'), 'trusted.overlay.impure', 'y')
    setfattr(at('var/uopq'), 'user.overlay.opaque', 'y')
    setfattr(at('var/uopq'), 'user.overlay.origin', 'o')
    // Escaped: attributes that came from outside, which a mount never acts on; packed as they came.
    setfattr(at('etc/passwd'), 'trusted.overlay.overlay.redirect', '/elsewhere')
    setfattr(at('etc/passwd'), 'trusted.overlay.origin', 'bookkeeping')
    setfattr(at('var/escaped'), 'user.overlay.overlay.opaque', 'y')
    touch(at('etc/passwd'), '1.123456789')
    touch(at('bin/sh'), '2.0000004')
    touch(at('dev/fifo'), '3.9999996')
    touch(at('etc/opq'), '1700000000.1234565')
    touch(at('var'), '-1.25')
    touch(data, '1700000001.5')
  }

  it('writes whiteouts, both opaque forms, escaped attributes, devices and FIFOs as a layer says them', async function () {
    makeWafer()
    const output = path.join(root, 'layer.tar.gz')
    const packed = await packLayer(data, output)
    const members = readTar(output)
    expect(members.map((member) => member.name)).to.deep.equal([
      './',
      '.wh..wh..opq',
      '.wh.gone',
      'bin/',
      'bin/sh',
      'bin/su',
      'dev/',
      'dev/fifo',
      'dev/null',
      'etc/',
      'etc/opq/',
      'etc/opq/.wh..wh..opq',
      'etc/opq/kept',
      'etc/passwd',
      'etc/passwd-link',
      'var/',
      'var/escaped/',
      'var/uopq/',
      'var/uopq/.wh..wh..opq',
      'var/uopq/file',
    ])
    const by = Object.fromEntries(members.map((member) => [member.name, member]))
    expect(by['.wh.gone']).to.include({size: 0, type: '0'})
    expect(by['bin/su']).to.include({mode: 0o4755, type: '0'})
    expect(by['bin/sh']).to.include({linkname: 'dash', type: '2'})
    expect(by['dev/null']).to.include({devmajor: 1, devminor: 3, type: '3'})
    expect(by['dev/fifo']).to.include({mode: 0o600, type: '6'})
    expect(by['etc/passwd']).to.include({gid: 1001, size: 11, type: '0', uid: 1000, uname: ''})
    expect(by['etc/passwd-link']).to.include({linkname: 'etc/passwd', type: '1'})
    // The escaped attribute travels under its own name; overlay's bookkeeping stays home.
    expect(by['etc/passwd'].xattrs).to.deep.equal({'trusted.overlay.redirect': '/elsewhere', 'user.note': 'hello'})
    expect(by['var/escaped/'].xattrs).to.deep.equal({'user.overlay.opaque': 'y'})
    for (const name of ['./', 'etc/opq/', 'var/uopq/']) expect(by[name].xattrs, name).to.deep.equal({})
    // Times to the nearest microsecond, as exact decimals, before 1970 too.
    expect(by['etc/passwd'].mtime).to.equal('1.123457')
    expect(by['bin/sh'].mtime).to.equal('2')
    expect(by['dev/fifo'].mtime).to.equal('4')
    expect(by['etc/opq/'].mtime).to.equal('1700000000.123457')
    expect(by['var/'].mtime).to.equal('-1.25')
    expect(by['./'].mtime).to.equal('1700000001.5')
    expect(by['.wh..wh..opq'].mtime).to.equal('1700000001.5')

    const blob = readFileSync(output)
    expect(packed.digest).to.equal(`sha256:${createHash('sha256').update(blob).digest('hex')}`)
    expect(packed.diffId).to.equal(`sha256:${createHash('sha256').update(gunzipSync(blob)).digest('hex')}`)
    expect(packed.size).to.equal(blob.length)
    const again = await packLayer(data, path.join(root, 'again.tar.gz'))
    expect(again).to.deep.equal(packed)
  })

  it('refuses a socket, naming it, with a hint', async function () {
    mkdirSync(path.join(data, 'run'))
    const socket = path.join(data, 'run', 'app.sock')
    execFileSync('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', socket])
    const error = await packLayer(data, path.join(root, 'layer.tar.gz')).catch((error_: unknown) => error_)
    expect(error).to.be.instanceOf(WafersError)
    expect((error as WafersError).message).to.equal(`${socket} is a socket, which a layer tar cannot carry.`)
    expect(String((error as WafersError).suggestions)).to.match(/^Remove it from the wafer and push again/)
  })

  for (const [name, value] of [
    ['trusted.overlay.redirect', '/a'],
    ['user.overlay.metacopy', ''],
  ]) {
    it(`refuses a file carrying ${name}, naming both`, async function () {
      const file = path.join(data, 'moved')
      mkdirSync(file)
      execFileSync('setfattr', ['-n', name, ...(value ? ['-v', value] : []), file])
      const error = await packLayer(data, path.join(root, 'layer.tar.gz')).catch((error_: unknown) => error_)
      expect(error).to.be.instanceOf(WafersError)
      expect((error as WafersError).message).to.match(new RegExp(`^${file} carries ${name.replaceAll('.', '\\.')}:`))
    })
  }

  it('rounds to the nearest microsecond, halves up, before 1970 as well', function () {
    expect(packedTime(1_123_456_789n)).to.deep.equal({mtime: 1, mtimeNs: 123_457_000})
    expect(packedTime(1_123_456_499n)).to.deep.equal({mtime: 1, mtimeNs: 123_456_000})
    expect(packedTime(1_999_999_500n)).to.deep.equal({mtime: 2, mtimeNs: 0})
    expect(packedTime(-1_250_000_000n)).to.deep.equal({mtime: -2, mtimeNs: 750_000_000})
    expect(packedTime(-1n)).to.deep.equal({mtime: 0, mtimeNs: 0})
    expect(packedTime(-501n)).to.deep.equal({mtime: -1, mtimeNs: 999_999_000})
  })
})
