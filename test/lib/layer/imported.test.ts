import {expect} from 'chai'
import {execFileSync} from 'node:child_process'
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {loadXattr} from '../../../src/lib/host/xattr.js'
import {FOREIGN_UID_BASE, LayerNotTaken, takeImportedLayer} from '../../../src/lib/layer/imported.js'
import {isWhiteout} from '../../../src/lib/layer/whiteouts.js'
import {requireMounts} from '../../helpers/sandbox.js'

const OLD = new Date('2019-05-06T07:08:09Z')

function file(at: string, content = '', mode = 0o644): void {
  mkdirSync(path.dirname(at), {recursive: true})
  writeFileSync(at, content, {mode})
}

function attr(at: string, name: string, value: string): void {
  execFileSync('setfattr', ['-h', '-n', name, '-v', value, at])
}

function attrs(at: string): Record<string, string> {
  const out = execFileSync('getfattr', ['-h', '-d', '-m', '-', '--absolute-names', at], {encoding: 'utf8'})
  const found: Record<string, string> = {}
  for (const line of out.split('\n')) {
    const match = /^([^#=][^=]*)="(.*)"$/.exec(line)
    if (match) found[match[1]] = match[2]
  }

  return found
}

/** Every path under `dir`, sorted, with a type letter: d, f, l, w (whiteout). */
function listing(dir: string): string[] {
  const out: string[] = []
  for (const rel of readdirSync(dir, {recursive: true}) as string[]) {
    const stat = lstatSync(path.join(dir, rel))
    out.push(`${rel} ${isWhiteout(stat) ? 'w' : stat.isDirectory() ? 'd' : stat.isSymbolicLink() ? 'l' : 'f'}`)
  }

  return out.sort()
}

describe('takeImportedLayer (a layer importctl unpacked, into a wafer by hard links)', () => {
  let root: string
  let lower: string
  let data: string

  beforeEach(async function () {
    requireMounts(this)
    await loadXattr()
    root = mkdtempSync(path.join(os.tmpdir(), 'wafers-imported-'))
    lower = path.join(root, 'lower')
    data = path.join(root, 'data')
    mkdirSync(data)
    // The layer below, as a wafer holds it.
    file(path.join(lower, 'gone/file'), 'deleted above\n')
    file(path.join(lower, 'gone/kept'), 'kept\n')
    file(path.join(lower, 'op/old'), 'hidden above\n')
    mkdirSync(path.join(lower, 'implied'))
    chmodSync(path.join(lower, 'implied'), 0o751)
    chownSync(path.join(lower, 'implied'), 12, 34)
    utimesSync(path.join(lower, 'implied'), OLD, OLD)
  })

  afterEach(() => {
    if (root) rmSync(root, {force: true, recursive: true})
  })

  it("takes systemd 262's tree (.wh. files kept as the tar had them) as whiteouts, opaque marks and hard links", async () => {
    const source = path.join(root, '.oci-sha256:262')
    mkdirSync(source)
    file(path.join(source, 'gone/.wh.file'), '', 0)
    file(path.join(source, 'op/.wh..wh..opq'), '', 0)
    file(path.join(source, 'op/new'), 'new\n')
    file(path.join(source, 'same/.wh.x'), '', 0)
    file(path.join(source, 'same/x'), 'in the same layer: stays\n')
    file(path.join(source, '.wh..wh.plnk'), '', 0)
    // systemd makes a parent the tar does not list itself: 0700 root:root, its time never set.
    file(path.join(source, 'implied/child'), 'child\n')
    chmodSync(path.join(source, 'implied'), 0o700)
    for (const dir of ['gone', 'op', 'same', '.']) utimesSync(path.join(source, dir), OLD, OLD)

    const taken = await takeImportedLayer(source, data, [lower], 'layer 1')
    expect(listing(data)).to.deep.equal([
      'gone d',
      'gone/file w',
      'implied d',
      'implied/child f',
      'op d',
      'op/new f',
      'same d',
      'same/x f',
    ])
    expect(taken).to.deep.include({whiteouts: 1})
    expect(attrs(path.join(data, 'op'))).to.deep.equal({'trusted.overlay.opaque': 'y', 'user.overlay.opaque': 'y'})
    expect(lstatSync(path.join(data, 'op/new')).ino).to.equal(lstatSync(path.join(source, 'op/new')).ino)
    const implied = lstatSync(path.join(data, 'implied'))
    expect([implied.mode & 0o7777, implied.uid, implied.gid, implied.mtimeMs]).to.deep.equal([
      0o751,
      12,
      34,
      OLD.getTime(),
    ])
    expect(lstatSync(path.join(data, 'op')).mtimeMs).to.equal(OLD.getTime())
    // importctl's tree is as it was.
    expect(listing(source)).to.include.members(['gone/.wh.file f', 'op/.wh..wh..opq f'])
    expect(attrs(path.join(source, 'op'))).to.deep.equal({})
  })

  it("takes later systemd's tree (user.overlay.whiteout files, opaque=x and =y) in wafers' form", async () => {
    const source = path.join(root, '.oci-sha256:main')
    file(path.join(source, 'gone/file'), '', 0)
    attr(path.join(source, 'gone/file'), 'user.overlay.whiteout', 'y')
    attr(path.join(source, 'gone'), 'user.overlay.opaque', 'x')
    file(path.join(source, 'op/new'), 'new\n')
    attr(path.join(source, 'op'), 'user.overlay.opaque', 'y')
    attr(path.join(source, 'op/new'), 'user.note', 'kept')
    execFileSync('mknod', [path.join(source, 'dev0'), 'c', '0', '0'])

    await takeImportedLayer(source, data, [lower], 'layer 1')
    expect(listing(data)).to.deep.equal(['dev0 w', 'gone d', 'gone/file w', 'op d', 'op/new f'])
    expect(attrs(path.join(data, 'gone'))).to.deep.equal({})
    expect(attrs(path.join(data, 'op'))).to.deep.equal({'trusted.overlay.opaque': 'y', 'user.overlay.opaque': 'y'})
    expect(attrs(path.join(data, 'op/new'))).to.deep.equal({'user.note': 'kept'})
    expect(attrs(path.join(source, 'gone'))).to.deep.equal({'user.overlay.opaque': 'x'})
  })

  it('refuses, naming the file, a layer with an overlay attribute of its own, and one owned by the foreign UID range', async () => {
    const source = path.join(root, '.oci-sha256:odd')
    file(path.join(source, 'etc/odd'), 'x\n')
    attr(path.join(source, 'etc/odd'), 'trusted.overlay.redirect', '/elsewhere')
    const refused = await takeImportedLayer(source, data, [], 'layer 2').catch((error: unknown) => error)
    expect(refused).to.be.instanceOf(LayerNotTaken)
    expect((refused as Error).message).to.equal(
      'layer 2 carries the overlay attribute trusted.overlay.redirect on "etc/odd", which wafers would store escaped and importctl keeps as it is; pull the image with wafers instead.',
    )

    const foreign = path.join(root, '.oci-sha256:foreign')
    mkdirSync(foreign)
    chownSync(foreign, FOREIGN_UID_BASE, FOREIGN_UID_BASE)
    const other = mkdtempSync(path.join(root, 'data-'))
    const refusedToo = await takeImportedLayer(foreign, other, [], 'layer 3').catch((error: unknown) => error)
    expect((refusedToo as Error).message).to.match(/^layer 3 is owned by systemd's foreign UID range/)
    expect(readdirSync(other)).to.deep.equal([])
  })

  it('refuses a layer someone other than root could have made or changed: its owner, its mode, its image root', async () => {
    const planted = path.join(root, '.oci-sha256:planted')
    file(path.join(planted, 'etc/hello'), 'evil\n')
    chownSync(planted, 65_534, 65_534)
    const refused = await takeImportedLayer(planted, data, [], 'layer 1').catch((error: unknown) => error)
    expect(refused).to.be.instanceOf(LayerNotTaken)
    expect((refused as LayerNotTaken).reason).to.equal(
      `layer 1: ${planted} is not root's alone (owner 65534, mode 0755), and wafers takes importctl's files only from root`,
    )
    expect(readdirSync(data)).to.deep.equal([])

    chownSync(planted, 0, 0)
    chmodSync(planted, 0o775)
    expect(
      (await takeImportedLayer(planted, data, [], 'layer 1').catch((error: unknown) => error)) as Error,
    ).to.be.instanceOf(LayerNotTaken)

    // An image root anyone may write to (a sticky /tmp-like directory): nothing in it is root's word.
    const open = path.join(root, 'open')
    const inOpen = path.join(open, '.oci-sha256:inopen')
    file(path.join(inOpen, 'etc/hello'), 'evil\n')
    chmodSync(open, 0o1777)
    const refusedToo = await takeImportedLayer(inOpen, data, [], 'layer 1').catch((error: unknown) => error)
    expect((refusedToo as LayerNotTaken).reason).to.match(
      /^layer 1: .*\/open is not root's alone \(owner 0, mode 1777\)/,
    )
    expect(readdirSync(data)).to.deep.equal([])
  })
})
