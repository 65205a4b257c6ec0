import {expect} from 'chai'

import {overlayOptionLayers, parseMountInfo} from '../../../src/lib/host/mounts.js'

const MOUNTINFO = [
  '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
  String.raw`65 22 0:39 / /var/lib/machines/web rw,relatime - overlay /var/lib/wafers/.links rw,lowerdir=abcde:fghij,upperdir=../web/data,workdir=../web/work,uuid=on`,
  String.raw`66 22 254:0 /srv/my\040wafers/base/data /var/lib/machines/my\040base rw,relatime shared:1 - ext4 /dev/vda rw`,
  String.raw`67 22 0:40 / /mnt/hand rw - overlay overlay rw,lowerdir=/w/b/data:/w/a/data,upperdir=/w/c/data,workdir=/w/c/work`,
].join('\n')

describe('mount table', function () {
  it('parses mountinfo, decoding escaped spaces', function () {
    const table = parseMountInfo(MOUNTINFO)
    expect(table.map((entry) => entry.mountpoint)).to.deep.equal([
      '/',
      '/var/lib/machines/web',
      '/var/lib/machines/my base',
      '/mnt/hand',
    ])
    expect(table[2].root).to.equal('/srv/my wafers/base/data')
    expect(table[1]).to.include({fstype: 'overlay', source: '/var/lib/wafers/.links'})
  })

  it('resolves the relative layers of a wafers mount against its source', function () {
    const [, ours, , byHand] = parseMountInfo(MOUNTINFO)
    expect(overlayOptionLayers(ours)).to.deep.equal({
      lowers: ['/var/lib/wafers/.links/abcde', '/var/lib/wafers/.links/fghij'],
      upper: '/var/lib/wafers/web/data',
    })
    expect(overlayOptionLayers(byHand)).to.deep.equal({lowers: ['/w/b/data', '/w/a/data'], upper: '/w/c/data'})
  })
})
