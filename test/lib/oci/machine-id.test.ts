import {expect} from 'chai'
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {gunzipSync} from 'node:zlib'

import {layerDiffId, packLayer} from '../../../src/lib/layer/archive.js'
import {blankMachineId, machineIdBlanker, onlyMachineId} from '../../../src/lib/oci/machine-id.js'

/**
 * Writes with python3's tarfile, gzip-compressed, in pax format, the entries `spec` lists (a
 * `longname` entry gets a pax path header, a `big` one content past a block, a `.wh.` whiteout).
 */
const MAKE_TAR = `
import io, sys, tarfile
out = sys.argv[1]
with tarfile.open(out, 'w:gz', format=tarfile.PAX_FORMAT) as tar:
    def add(name, data=None, kind=tarfile.REGTYPE, pax=None):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mtime = 1700000000
        info.mode = 0o444 if name.endswith('machine-id') else 0o644
        if pax: info.pax_headers = pax
        if data is not None: info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data is not None else None)
    add('./', kind=tarfile.DIRTYPE)
    add('etc/', kind=tarfile.DIRTYPE)
    add('etc/hostname', b'host\\n', pax={'SCHILY.xattr.user.x': 'y'})
    add('etc/machine-id', b'0123456789abcdef0123456789abcdef\\n', pax={'mtime': '1700000000.5'})
    add('etc/' + 'd' * 150 + '/long', b'long name\\n')
    add('srv/big', bytes(range(256)) * 9)
    add('srv/.wh.gone', b'')
`

async function python(script: string, ...args: string[]): Promise<string> {
  return (await execa('python3', ['-c', script, ...args])).stdout
}

/** Each member as python's tarfile reads it: name, size, sha256 of content, mtime and pax headers. */
const LIST_TAR = `
import hashlib, json, sys, tarfile
with tarfile.open(sys.argv[1], 'r:gz') as tar:
    out = []
    for m in tar.getmembers():
        data = tar.extractfile(m).read() if m.isfile() else b''
        out.append([m.name, m.size, hashlib.sha256(data).hexdigest(), m.mtime, m.mode, sorted(m.pax_headers.items())])
    print(json.dumps(out))
`

/** name, size, sha256 of the content, mtime, mode, pax headers. */
type Member = [string, number, string, number, number, unknown]

describe('oci: machine ids left out of pushed layers', function () {
  let dir: string

  beforeEach(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-machine-id-'))
  })

  afterEach(async function () {
    await fs.rm(dir, {force: true, recursive: true})
  })

  it('empties etc/machine-id of a pax layer and leaves every other entry as python and GNU tar read it', async function () {
    const input = path.join(dir, 'in.tar.gz')
    const output = path.join(dir, 'out.tar.gz')
    await python(MAKE_TAR, input)
    const result = await blankMachineId(input, output)
    const before = JSON.parse(await python(LIST_TAR, input)) as Member[]
    const after = JSON.parse(await python(LIST_TAR, output)) as Member[]
    expect(after.map((entry) => entry[0])).to.deep.equal(before.map((entry) => entry[0]))
    for (const [i, entry] of after.entries()) {
      if (entry[0] === 'etc/machine-id') {
        // Empty, with its mode, mtime and pax headers as they were.
        expect(entry[1]).to.equal(0)
        expect([entry[3], entry[4], entry[5]]).to.deep.equal([before[i][3], before[i][4], before[i][5]])
      } else {
        expect(entry).to.deep.equal(before[i])
      }
    }

    // GNU tar reads it whole, and the digests returned are those of the bytes written.
    const listing = await execa('tar', ['-tzvf', output])
    expect(listing.stdout).to.match(/ 0 .*etc\/machine-id/)
    const blob = await fs.readFile(output)
    expect(result.digest).to.equal(`sha256:${createHash('sha256').update(blob).digest('hex')}`)
    expect(result.size).to.equal(blob.length)
    expect(result.diffId).to.equal(`sha256:${createHash('sha256').update(gunzipSync(blob)).digest('hex')}`)
    // The same input gives the same bytes.
    const again = path.join(dir, 'again.tar.gz')
    expect((await blankMachineId(input, again)).digest).to.equal(result.digest)
  })

  it('hashes a wafer, machine id emptied, to the diffID push sends, writing nothing', async function () {
    const data = path.join(dir, 'data')
    await fs.mkdir(path.join(data, 'etc', 'sub'), {recursive: true})
    await fs.writeFile(path.join(data, 'etc', 'machine-id'), '0123456789abcdef0123456789abcdef\n')
    await fs.writeFile(path.join(data, 'etc', 'sub', 'big'), Buffer.alloc(3 * 1024 * 1024, 7))
    await fs.writeFile(path.join(data, 'etc', 'zzz'), 'after the machine id\n')
    const packed = path.join(dir, 'packed.tar.gz')
    await packLayer(data, packed)
    const pushed = await blankMachineId(packed, path.join(dir, 'pushed.tar.gz'))
    const plain = await packLayer(data, path.join(dir, 'plain.tar.gz'))
    expect(await layerDiffId(data)).to.equal(plain.diffId)
    expect(await layerDiffId(data, {rewrite: machineIdBlanker()})).to.equal(pushed.diffId)
    expect(pushed.diffId).to.not.equal(plain.diffId)
    expect((await fs.readdir(data, {recursive: true})).sort()).to.deep.equal([
      'etc',
      'etc/machine-id',
      'etc/sub',
      'etc/sub/big',
      'etc/zzz',
    ])
  })

  it('knows a wafer whose only file is its machine id', async function () {
    await fs.mkdir(path.join(dir, 'etc'))
    await fs.writeFile(path.join(dir, 'etc', 'machine-id'), 'x\n')
    expect(await onlyMachineId(dir)).to.equal(true)
    await fs.writeFile(path.join(dir, 'etc', 'hostname'), 'x\n')
    expect(await onlyMachineId(dir)).to.equal(false)
    await fs.rm(path.join(dir, 'etc', 'hostname'))
    await fs.mkdir(path.join(dir, 'srv'))
    expect(await onlyMachineId(dir)).to.equal(false)
  })
})
