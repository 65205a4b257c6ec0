import {expect} from 'chai'

import {MAX_OPTIONS_LENGTH, overlayMountOptions, stackLayers} from '../../../src/lib/mount/overlay.js'
import {MAX_LOWER_LAYERS} from '../../../src/lib/store/ancestry.js'
import {progressMode} from '../../../src/lib/ui/progress.js'

describe('overlay options', function () {
  it('fit 500 lower layers under a 64-character top wafer in one page', function () {
    const ids = Array.from({length: MAX_LOWER_LAYERS}, (_, i) => i.toString(32).padStart(5, '0'))
    const options = overlayMountOptions(stackLayers('t'.repeat(64), ids))
    expect(options.length).to.be.at.most(MAX_OPTIONS_LENGTH)
    expect(options.startsWith('lowerdir=00000:00001:')).to.equal(true)
    expect(options.endsWith(`upperdir=../${'t'.repeat(64)}/data,workdir=../${'t'.repeat(64)}/work`)).to.equal(true)
  })

  it('make a mount without an upper layer read-only', function () {
    expect(overlayMountOptions({lower: ['abcde', '/proc/1/fd/3/p']})).to.equal('ro,lowerdir=abcde:/proc/1/fd/3/p')
  })
})

describe('progress mode', function () {
  it('is live only on a terminal outside CI, and silent for --json', function () {
    expect(progressMode({columns: 120, env: {}, json: false, tty: true})).to.equal('interactive')
    expect(progressMode({columns: 0, env: {}, json: false, tty: true})).to.equal('plain')
    expect(progressMode({columns: 120, env: {CI: 'true'}, json: false, tty: true})).to.equal('plain')
    expect(progressMode({env: {}, json: false, tty: false})).to.equal('plain')
    expect(progressMode({env: {}, json: true, tty: true})).to.equal('silent')
  })
})
