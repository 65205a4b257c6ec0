import {expect} from 'chai'

import {packedAttribute, storedAttributeName} from '../../../src/lib/layer/xattrs.js'
import {isWhiteout, major, minor, whiteoutKind} from '../../../src/lib/layer/whiteouts.js'

describe('layer attribute policy', () => {
  it('stores overlay attributes from outside escaped, in both forms, and everything else as it is', () => {
    expect(storedAttributeName('trusted.overlay.opaque')).to.equal('trusted.overlay.overlay.opaque')
    expect(storedAttributeName('user.overlay.redirect')).to.equal('user.overlay.overlay.redirect')
    expect(storedAttributeName('trusted.overlay.overlay.x')).to.equal('trusted.overlay.overlay.overlay.x')
    expect(storedAttributeName('security.capability')).to.equal('security.capability')
    expect(storedAttributeName('user.overlayish')).to.equal('user.overlayish')
    expect(storedAttributeName('trusted.other')).to.equal('trusted.other')
  })

  it('packs an escaped attribute under its own name again, so it round-trips', () => {
    for (const name of ['trusted.overlay.opaque', 'user.overlay.metacopy', 'trusted.overlay.overlay.x']) {
      expect(packedAttribute(storedAttributeName(name))).to.deep.equal({action: 'keep', name})
    }
  })

  it('packs the opaque marker as the layer format does, refuses redirects and metacopy, drops bookkeeping', () => {
    expect(packedAttribute('trusted.overlay.opaque')).to.deep.equal({action: 'opaque'})
    expect(packedAttribute('user.overlay.opaque')).to.deep.equal({action: 'opaque'})
    expect(packedAttribute('trusted.overlay.redirect')).to.deep.equal({action: 'refuse'})
    expect(packedAttribute('user.overlay.metacopy')).to.deep.equal({action: 'refuse'})
    expect(packedAttribute('trusted.overlay.origin')).to.deep.equal({action: 'drop'})
    expect(packedAttribute('trusted.overlay.impure')).to.deep.equal({action: 'drop'})
    expect(packedAttribute('security.capability')).to.deep.equal({action: 'keep', name: 'security.capability'})
  })
})

describe('layer whiteout names', () => {
  it('tells whiteouts, opaque markers and aufs metadata from plain names', () => {
    expect(whiteoutKind('.wh.etc')).to.equal('whiteout')
    expect(whiteoutKind('.wh..wh..opq')).to.equal('opaque')
    expect(whiteoutKind(Buffer.from('.wh..wh.plnk'))).to.equal('aufs')
    expect(whiteoutKind('.whx')).to.equal('plain')
    expect(whiteoutKind('etc')).to.equal('plain')
  })

  it('knows a 0/0 character device for a whiteout and nothing else', () => {
    const stat = (char: boolean, rdev: number) => ({isCharacterDevice: () => char, rdev})
    expect(isWhiteout(stat(true, 0))).to.equal(true)
    expect(isWhiteout(stat(true, 259))).to.equal(false)
    expect(isWhiteout(stat(false, 0))).to.equal(false)
  })

  it('splits device numbers as glibc does, large ones too', () => {
    expect([major(0x0103), minor(0x0103)]).to.deep.equal([1, 3])
    // makedev(0x12345, 0x6789a) in glibc's encoding
    const dev =
      ((0x12345n & 0xfffn) << 8n) | ((0x12345n & ~0xfffn) << 32n) | (0x6789an & 0xffn) | ((0x6789an & ~0xffn) << 12n)
    expect([major(dev), minor(dev)]).to.deep.equal([0x12345, 0x6789a])
  })
})
