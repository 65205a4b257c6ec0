import {expect} from 'chai'

import {IgnoreRules, globRegex} from '../../../src/lib/builder/context.js'
import {execForm, keyValues, parseContainerfile, splitFlags, words} from '../../../src/lib/builder/parser.js'

describe('build: Containerfile parsing', function () {
  it('reads here-documents: the bodies, <<- tab stripping, quoted delimiters, and an unended one', function () {
    const file = parseContainerfile(
      [
        'FROM x',
        'COPY <<a <<"b" /d/',
        '# not a comment: $X',
        'a',
        '\tb body',
        'b',
        'RUN <<-E',
        '\t\tx',
        '\tE',
        'ENV Y=1',
      ].join('\n'),
    )
    expect(file.instructions.map((i) => i.keyword)).to.deep.equal(['FROM', 'COPY', 'RUN', 'ENV'])
    expect(file.instructions[1].heredocs).to.deep.equal([
      {body: '# not a comment: $X\n', expand: true, name: 'a'},
      {body: '\tb body\n', expand: false, name: 'b'},
    ])
    expect(file.instructions[2].heredocs).to.deep.equal([{body: 'x\n', expand: true, name: 'E'}])
    expect(file.instructions[3].line).to.equal(10)
    expect(() => parseContainerfile('FROM x\nRUN <<E\necho\n')).to.throw(
      'line 2: the here-document E has no line E to end it.',
    )
  })

  it('joins continuations, drops comments (inside continuations too) and reads directives', function () {
    const file = parseContainerfile(
      [
        '# syntax=docker/dockerfile:1',
        '# escape=`',
        '',
        'FROM base',
        '# a comment',
        'RUN echo a && `',
        '    # inside',
        '',
        '    echo b',
        'copy a b',
      ].join('\n'),
    )
    expect(file.escape).to.equal('`')
    expect(file.syntax).to.equal('docker/dockerfile:1')
    expect(file.instructions.map((i) => [i.keyword, i.args, i.line])).to.deep.equal([
      ['FROM', 'base', 4],
      ['RUN', 'echo a &&     echo b', 6],
      ['COPY', 'a b', 10],
    ])
  })

  it('takes a directive only at the very top', function () {
    const file = parseContainerfile('FROM x\n# escape=`\nRUN a \\\n b\n')
    expect(file.escape).to.equal('\\')
    expect(file.instructions[1].args).to.equal('a  b')
  })

  it('refuses unknown instructions and a file without FROM, naming the line', function () {
    expect(() => parseContainerfile('FROM x\nFROB y\n')).to.throw('line 2: unknown instruction FROB.')
    expect(() => parseContainerfile('RUN x\n')).to.throw('no FROM instruction')
    expect(() => parseContainerfile('ARG V=1\nRUN x\nFROM y\n')).to.throw(
      'line 2: only ARG may come before the first FROM',
    )
  })

  it('tells the exec form from the shell form as Docker does', function () {
    expect(execForm('["/bin/sh", "-c", "echo hi"]')).to.deep.equal(['/bin/sh', '-c', 'echo hi'])
    expect(execForm('[not json]')).to.equal(undefined)
    expect(execForm('echo ["a"]')).to.equal(undefined)
    expect(execForm('[1, 2]')).to.equal(undefined)
  })

  it('substitutes $VAR, ${VAR}, ${VAR:-x}, ${VAR:+x} outside single quotes', function () {
    const vars = new Map([
      ['A', 'one'],
      ['E', ''],
    ])
    expect(words('$A ${A}x ${B:-dflt} ${E:-empty} ${E-set} ${A:+alt} ${B:+alt}', vars)).to.deep.equal([
      'one',
      'onex',
      'dflt',
      'empty',
      'alt',
    ])
    expect(words(`'$A' "$A b" \\$A a\\ b`, vars)).to.deep.equal(['$A', 'one b', '$A', 'a b'])
    expect(words('${B:-$A}', vars)).to.deep.equal(['one'])
  })

  it('reads KEY=VALUE pairs and the legacy ENV KEY VALUE form', function () {
    const vars = new Map([['V', '2']])
    expect(keyValues('A=1 B="two words" C=$V', vars)).to.deep.equal([
      ['A', '1'],
      ['B', 'two words'],
      ['C', '2'],
    ])
    expect(keyValues('PATH /usr/bin:$V', vars, '\\', true)).to.deep.equal([['PATH', '/usr/bin:2']])
    expect(keyValues('legacy some  value "q  x" $V', vars, '\\', true)).to.deep.equal([
      ['legacy', 'some  value q  x 2'],
    ])
    expect(() => keyValues('novalue', vars)).to.throw('expected KEY=VALUE')
  })

  it('splits leading flags and refuses the ones it does not know', function () {
    expect(splitFlags('--chown=1:2 --chmod=644 a b', ['chown', 'chmod'], 'COPY')).to.deep.equal({
      flags: {chmod: '644', chown: '1:2'},
      rest: 'a b',
    })
    expect(() => splitFlags('--mount=type=cache x', [], 'RUN')).to.throw('RUN --mount is not supported')
  })
})

describe('build: context globs and .dockerignore', function () {
  it('matches globs as Go does, with ** for any number of directories', function () {
    expect(globRegex('*.txt').test('a.txt')).to.equal(true)
    expect(globRegex('*.txt').test('d/a.txt')).to.equal(false)
    expect(globRegex('**/*.txt').test('d/e/a.txt')).to.equal(true)
    expect(globRegex('**/*.txt').test('a.txt')).to.equal(true)
    expect(globRegex('file?.[ab]').test('file1.b')).to.equal(true)
    expect(globRegex('file?.[!ab]').test('file1.b')).to.equal(false)
  })

  it('leaves out what the last matching rule (or one for a parent) says, with ! exceptions', function () {
    const rules = IgnoreRules.parse('# comment\n*.log\n/build\n!keep.log\nsecrets/**\n')
    expect(rules.ignores('a.log')).to.equal(true)
    expect(rules.ignores('keep.log')).to.equal(false)
    expect(rules.ignores('build/out/x')).to.equal(true)
    expect(rules.ignores('src/a.log')).to.equal(false)
    expect(rules.ignores('secrets/key')).to.equal(true)
    expect(rules.ignores('src/main.c')).to.equal(false)
  })
})
