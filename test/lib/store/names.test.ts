import {expect} from 'chai'

import {checkName, isValidName} from '../../../src/lib/store/names.js'

describe('wafer names', function () {
  it('accepts machine names: letters, digits, "-", "_", "." up to 64 characters', function () {
    for (const name of ['archbase', 'archbase2', 'web_1', 'debian-12.4', '_x', '9', 'a'.repeat(64)]) {
      expect(isValidName(name), name).to.equal(true)
    }
  })

  it('refuses names that could escape $WAFERS or are not machine names', function () {
    for (const name of [
      '',
      '.',
      '..',
      '.hidden',
      '-x',
      'a/b',
      '../etc',
      'a b',
      'a:b',
      'a,b',
      'tab\t',
      'é',
      'a'.repeat(65),
    ]) {
      expect(isValidName(name), JSON.stringify(name)).to.equal(false)
    }
  })

  it('says the rule in the refusal', function () {
    expect(() => checkName('../etc')).to.throw('wafer name "../etc" is not valid: use ASCII letters, digits')
  })
})
