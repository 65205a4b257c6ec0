import {expect} from 'chai'
import {createHash} from 'node:crypto'

import {chainIds, layerWaferName} from '../../../src/lib/oci/chain.js'
import {defaultName, parseReference, pinned} from '../../../src/lib/oci/reference.js'

const digest = `sha256:${'a'.repeat(64)}`

describe('image references, as skopeo reads them', () => {
  it('reads docker:// with a host and port, a tag, a digest, and a bare name', () => {
    const tagged = parseReference('docker://127.0.0.1:5000/team/app:1.2')
    expect(tagged).to.include({host: '127.0.0.1:5000', repository: 'team/app', tag: '1.2', transport: 'docker'})
    expect(tagged.skopeo).to.equal('docker://127.0.0.1:5000/team/app:1.2')
    const pinnedRef = parseReference(`docker://127.0.0.1:5000/app@${digest}`)
    expect(pinnedRef).to.include({digest, transport: 'docker'})
    expect(parseReference('docker://debian').host).to.equal('docker.io')
    expect(defaultName(tagged)).to.equal('app')
    expect(pinned(tagged, digest)).to.equal(`docker://127.0.0.1:5000/team/app@${digest}`)
  })

  it('reads the local transports with their paths and tags', () => {
    expect(parseReference('oci:/srv/images/app:v1')).to.include({path: '/srv/images/app', tag: 'v1', transport: 'oci'})
    expect(parseReference('oci-archive:/tmp/a.tar')).to.include({path: '/tmp/a.tar', transport: 'oci-archive'})
    expect(parseReference('docker-archive:/tmp/d.tar')).to.include({path: '/tmp/d.tar', transport: 'docker-archive'})
  })

  it('refuses what skopeo would not take, in one sentence', () => {
    for (const bad of ['ftp://x/y', 'docker://h/r@sha256:zz', 'docker://h/r:bad tag']) {
      expect(() => parseReference(bad), bad).to.throw(/\.$/)
    }
  })
})

describe('OCI ChainIDs', () => {
  it('are the DiffID for the bottom layer and sha256(below + " " + DiffID) above, as the image spec says', () => {
    const diffIds = [`sha256:${'1'.repeat(64)}`, `sha256:${'2'.repeat(64)}`, `sha256:${'3'.repeat(64)}`]
    const second = `sha256:${createHash('sha256').update(`${diffIds[0]} ${diffIds[1]}`).digest('hex')}`
    const third = `sha256:${createHash('sha256').update(`${second} ${diffIds[2]}`).digest('hex')}`
    expect(chainIds(diffIds)).to.deep.equal([diffIds[0], second, third])
    expect(layerWaferName(third)).to.equal(`layer-${third.slice(7, 39)}`)
  })
})
