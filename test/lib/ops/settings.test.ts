import {expect} from 'chai'

import {settingsText} from '../../../src/lib/ops/settings.js'

describe('image settings for systemd-nspawn', () => {
  it('writes the command with quotes nspawn splits back into the same words, and the start mode it needs', () => {
    const text = settingsText(
      {Cmd: ['-c', 'echo "hi there"', ''], Entrypoint: ['/bin/sh']},
      'docker://127.0.0.1:5000/app:1',
    )
    expect(text.split('\n').slice(1, 4)).to.deep.equal([
      '[Exec]',
      'Boot=no',
      `Parameters=/bin/sh -c "echo "'"'"hi there"'"'"" ""`,
    ])
  })

  it('keeps environment values with blanks whole, names signals as systemd does, and leaves out what a line cannot hold', () => {
    const text = settingsText(
      {Env: ['A=b c', 'BAD=x\ny', 'PATH=/bin'], StopSignal: '3', User: '1000:1000', WorkingDir: '/srv'},
      'oci:/x',
    )
    expect(text).to.include('Environment="A=b c"\n').and.include('Environment=PATH=/bin\n')
    expect(text).to.not.include('BAD=')
    expect(text).to.include('KillSignal=SIGQUIT\n').and.include('WorkingDirectory=/srv\n')
    expect(text).to.include("# left out: User=1000:1000 (nspawn's User= takes a user name only)")
    expect(text).to.not.include('Parameters=')
  })
})

describe('image settings against a hostile image config', () => {
  it('lets no control character start a line or a section of its own', () => {
    const text = settingsText(
      {
        Cmd: ['sh\u0000Boot=yes'],
        Env: ['A=1\u0000PrivateUsers=no', 'B=2\rBind=/:/host'],
        User: 'x\r[Files]\rBind=/:/host',
        WorkingDir: '/w\u0000[Network]\u0000Private=no',
      },
      'img\rCapability=all',
    )
    expect(text).to.not.match(/[\u0000-\u0009\u000b-\u001f\u007f]/)
    const lines = text.trimEnd().split('\n')
    expect(lines.filter((line) => line.startsWith('['))).to.deep.equal(['[Exec]'])
    expect(lines.filter((line) => !line.startsWith('#') && line !== '[Exec]')).to.deep.equal([])
  })
})
