import {expect} from 'chai'

import {WafersError} from '../../../src/lib/errors.js'
import {parseDuration, timeoutOptions} from '../../../src/lib/oci/flags.js'
import {duration} from '../../../src/lib/oci/skopeo.js'

describe('time-out flags', function () {
  it('reads durations as skopeo and Go spell them, and writes them back the same way', function () {
    expect(parseDuration('90s', '--idle-timeout')).to.equal(90_000)
    expect(parseDuration('1500ms', '--idle-timeout')).to.equal(1500)
    expect(parseDuration('1h30m', '--idle-timeout')).to.equal(5_400_000)
    expect(parseDuration('0.5s', '--idle-timeout')).to.equal(500)
    expect(parseDuration(undefined, '--idle-timeout')).to.equal(undefined)
    expect(timeoutOptions({'command-timeout': '2m'})).to.deep.equal({commandTimeout: 120_000, idleTimeout: undefined})
    for (const ms of [90_000, 1500, 120_000, 1000]) expect(parseDuration(duration(ms), '--x')).to.equal(ms)
    expect(duration(120_000)).to.equal('2m')
    expect(duration(2000)).to.equal('2s')
  })

  it('refuses what is not a duration, or is none, in one sentence naming the flag', function () {
    for (const text of ['soon', '10', '5 s', '1h 30m', '-1s', '0s', 's']) {
      expect(() => parseDuration(text, '--command-timeout'), text)
        .to.throw(WafersError)
        .with.property('message')
        .that.matches(/^--command-timeout takes a duration/)
    }
  })
})
