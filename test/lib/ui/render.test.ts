import {expect} from 'chai'
import fc from 'fast-check'

import {abbreviations, fitTable, table} from '../../../src/lib/ui/render.js'

const hex = (length: number) => fc.stringMatching(new RegExp(`^[0-9a-f]{${length}}$`))

describe('fitting a table to a terminal', function () {
  it('shortens generated names to the fewest digits, at least 8, that tell them apart, as git does', function () {
    const names = [
      `layer-${'0123456789abcdef'.repeat(2)}`,
      `layer-0123456789ab${'f'.repeat(20)}`,
      `build-${'a'.repeat(40)}`,
      `build-0123456789abcdef${'0'.repeat(24)}`,
      'web',
      'layer-not-hex',
    ]
    expect(Object.fromEntries(abbreviations(names))).to.deep.equal({
      [names[0]]: 'layer-0123456789abc…',
      [names[1]]: 'layer-0123456789abf…',
      // No layer- name starts like it: 8 digits do, even though a build- name shares them.
      [names[2]]: 'build-aaaaaaaa…',
      [names[3]]: 'build-01234567…',
    })
  })

  it('keeps every short form distinct and a prefix of its name', function () {
    fc.assert(
      fc.property(
        fc.uniqueArray(
          fc.oneof(
            hex(32).map((id) => `layer-${id}`),
            hex(40).map((id) => `build-${id}`),
          ),
          {minLength: 1, maxLength: 40},
        ),
        (names) => {
          const short = abbreviations(names)
          const forms = names.map((name) => short.get(name) ?? name)
          expect(new Set(forms).size).to.equal(names.length)
          for (const [i, name] of names.entries()) expect(name.startsWith(forms[i].replace(/…$/, ''))).to.equal(true)
        },
      ),
    )
  })

  it('leaves a table that fits, or has no width, whole, and cuts the last column of one that does not', function () {
    const long = `build-${'c'.repeat(40)}`
    const rows = [
      [long, `layer-${'d'.repeat(32)}`, 'yes', 'from docker://127.0.0.1:5000/some/long/repository/name:with-a-tag'],
      ['web', long, 'no', ''],
    ]
    const header = ['NAME', 'PARENT', 'STACKED', 'NOTE']
    expect(fitTable(header, rows, {names: [0, 1]})).to.deep.equal(table(header, rows))
    expect(fitTable(header, rows, {names: [0, 1], width: 500})).to.deep.equal(table(header, rows))
    const fitted = fitTable(header, rows, {names: [0, 1], width: 60})
    for (const line of fitted) expect(line.length, line).to.be.at.most(60)
    expect(fitted.map((line) => line.split(/ {2,}/))).to.deep.equal([
      ['NAME', 'PARENT', 'STACKED', 'NOTE'],
      ['build-cccccccc…', 'layer-dddddddd…', 'yes', 'from docker://12…'],
      ['web', 'build-cccccccc…', 'no'],
    ])
  })
})
