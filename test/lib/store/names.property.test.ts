import {expect} from 'chai'
import fc from 'fast-check'
import path from 'node:path'

import {MAX_NAME_LENGTH, isValidName} from '../../../src/lib/store/names.js'
import {WaferStore} from '../../../src/lib/store/store.js'

/** The rule written out character by character, independently of the regular expression. */
function followsRule(name: string): boolean {
  if (name.length === 0 || name.length > MAX_NAME_LENGTH) return false
  if (name[0] === '.' || name[0] === '-') return false
  return [...name].every((char) => /[A-Za-z0-9]/.test(char) || char === '-' || char === '_' || char === '.')
}

// Strings biased towards the characters that matter: separators, dots, dashes, controls, unicode.
const nameLike = fc.string({
  maxLength: 70,
  unit: fc.oneof(
    fc.constantFrom('a', 'Z', '0', '9', '-', '_', '.', '/', '\\', ':', ',', ' ', '\n', '\t', '\0', '*', 'é', '..'),
    fc.string({maxLength: 1, minLength: 1, unit: 'grapheme'}),
  ),
})

describe('wafer names (property)', function () {
  it('are accepted exactly when they follow the machine-name rule', function () {
    fc.assert(
      fc.property(nameLike, (name) => isValidName(name) === followsRule(name)),
      {numRuns: 5000},
    )
  })

  it('never resolve outside $WAFERS or $STACKS when accepted', function () {
    const store = new WaferStore('/var/lib/wafers')
    fc.assert(
      fc.property(nameLike, (name) => {
        if (!isValidName(name)) return true
        const inWafers = path.relative('/var/lib/wafers', store.dir(name))
        const inStacks = path.relative('/var/lib/machines', path.join('/var/lib/machines', name))
        return [inWafers, inStacks].every(
          (relative) => relative === name && !relative.includes('/') && relative !== '..',
        )
      }),
      {numRuns: 5000},
    )
  })

  it('are refused by the store before any path is built from them', function () {
    const store = new WaferStore('/var/lib/wafers')
    fc.assert(
      fc.property(nameLike, (name) => {
        if (isValidName(name)) return true
        expect(() => store.dir(name)).to.throw('is not valid')
        return true
      }),
      {numRuns: 2000},
    )
  })
})
