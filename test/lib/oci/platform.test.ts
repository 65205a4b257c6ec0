import {expect} from 'chai'
import {execFileSync} from 'node:child_process'

import {hostPlatform, ociArchitecture, platformText} from '../../../src/lib/oci/platform.js'

describe('host platform', function () {
  it('names the architectures Node names its own way as OCI does, and the others as they are', function () {
    expect(ociArchitecture('x64')).to.equal('amd64')
    expect(ociArchitecture('ia32')).to.equal('386')
    expect(ociArchitecture('ppc64')).to.equal('ppc64le')
    expect(ociArchitecture('mipsel')).to.equal('mipsle')
    for (const same of ['arm', 'arm64', 'loong64', 'mips', 'riscv64', 's390x'])
      expect(ociArchitecture(same)).to.equal(same)
    // A name that is also a property of every object is no architecture of the table.
    expect(ociArchitecture('constructor')).to.equal('constructor')
  })

  it('is the platform buildah says this machine has (Go names architectures as OCI does)', function () {
    this.timeout(30_000)
    const arch = execFileSync('buildah', ['info', '--format', '{{.host.arch}}'], {encoding: 'utf8'}).trim()
    expect(hostPlatform()).to.deep.equal({architecture: arch, os: 'linux'})
    expect(platformText(hostPlatform())).to.equal(`linux/${arch}`)
  })
})
