import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {chownRisk, quoteArg, systemdDirsFromEnv, unitText} from '../../../src/lib/ops/enable.js'

describe('boot units', function () {
  it('defaults to /etc/systemd/system and /etc/systemd/nspawn, overridden from the environment', function () {
    expect(systemdDirsFromEnv({})).to.deep.equal({nspawn: '/etc/systemd/nspawn', units: '/etc/systemd/system'})
    expect(systemdDirsFromEnv({WAFERS_NSPAWN_DIR: '/n', WAFERS_UNIT_DIR: '/u'})).to.deep.equal({
      nspawn: '/n',
      units: '/u',
    })
  })

  it('quotes words so systemd expands neither specifiers nor, on Exec lines, variables', function () {
    expect(quoteArg('/opt/my "odd" 100%$HOME\\dir', true)).to.equal('"/opt/my \\"odd\\" 100%%$$HOME\\\\dir"')
    expect(quoteArg('STACKS=/srv/100% $x')).to.equal('"STACKS=/srv/100%% $x"')
  })

  it('runs wafers with the store it was enabled for', function () {
    const text = unitText({stacks: '/var/lib/machines', wafers: '/srv/wafers'}, 'web', {
      node: '/usr/bin/node',
      script: '/opt/wafers/bin/run.js',
    })
    expect(text).to.include('Environment="WAFERS=/srv/wafers" "STACKS=/var/lib/machines"\n')
    expect(text).to.include('ExecStart="/usr/bin/node" "/opt/wafers/bin/run.js" "stack" "web"\n')
    expect(text).to.include('Description=Wafers stack web at /var/lib/machines/web\n')
  })

  describe('chown risk of a stack in /var/lib/machines', function () {
    let dir: string

    beforeEach(async function () {
      dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-boot-'))
    })

    afterEach(async function () {
      await fs.rm(dir, {force: true, recursive: true})
    })

    it('warns with the fix when no nspawn file turns user namespacing off, and not elsewhere', async function () {
      const dirs = {nspawn: dir, units: dir}
      expect(await chownRisk(dirs, '/srv/stacks/web-risk-test')).to.equal(undefined)
      expect(await chownRisk(dirs, '/var/lib/machines/web-risk-test')).to.equal(
        'machinectl start web-risk-test would run systemd-nspawn -U, which chowns the whole stack into wafer web-risk-test; run "wafers enable web-risk-test" first.',
      )
      await fs.writeFile(path.join(dir, 'web-risk-test.nspawn'), '[Exec]\nBoot=yes\n')
      expect(await chownRisk(dirs, '/var/lib/machines/web-risk-test')).to.match(
        /does not say PrivateUsers=no, so machinectl start web-risk-test would chown/,
      )
      await fs.writeFile(path.join(dir, 'web-risk-test.nspawn'), '[Exec]\nPrivateUsers=no\n')
      expect(await chownRisk(dirs, '/var/lib/machines/web-risk-test')).to.equal(undefined)
    })
  })
})
