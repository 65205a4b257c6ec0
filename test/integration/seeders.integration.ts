import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {hasStackTrace, nspawnIn, said, Sandbox, snapshot, useSandbox} from '../helpers/sandbox.js'

/** setfattr/getfattr come with the attr package; CI installs it, elsewhere xattr checks skip. */
async function haveXattrTools(context: Mocha.Context): Promise<boolean> {
  const found = (await execa('setfattr', ['--version'], {reject: false})).exitCode === 0
  if (found) return true
  if (process.env.CI) throw new Error('setfattr is missing under CI: install the attr package')
  console.warn('      (xattr checks skipped: install the attr package)')
  void context
  return false
}

/** A small tree with what a root file system has: owners, odd modes, symlinks, hard links, xattrs. */
async function makeTree(root: string, xattrs: boolean): Promise<void> {
  await fs.mkdir(path.join(root, 'etc'), {recursive: true})
  await fs.mkdir(path.join(root, 'bin'))
  await fs.mkdir(path.join(root, 'tmp'))
  await fs.chmod(path.join(root, 'tmp'), 0o1777)
  await fs.writeFile(path.join(root, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n')
  await fs.writeFile(path.join(root, 'etc', 'shadow'), 'root:*:1::::::\n')
  await fs.chmod(path.join(root, 'etc', 'shadow'), 0o640)
  await fs.chown(path.join(root, 'etc', 'shadow'), 0, 42)
  await fs.writeFile(path.join(root, 'bin', 'tool'), '#!/bin/sh\n')
  await fs.chmod(path.join(root, 'bin', 'tool'), 0o4755)
  await fs.link(path.join(root, 'bin', 'tool'), path.join(root, 'bin', 'tool-again'))
  await fs.symlink('tool', path.join(root, 'bin', 'alias'))
  await fs.symlink('/etc/passwd', path.join(root, 'etc', 'absolute-link'))
  await fs.mkdir(path.join(root, 'home', 'jesse'), {recursive: true})
  await fs.chown(path.join(root, 'home', 'jesse'), 1000, 1000)
  await fs.chmod(path.join(root, 'home', 'jesse'), 0o700)
  await fs.chmod(root, 0o755)
  if (xattrs) {
    await execa('setfattr', ['-n', 'user.wafers', '-v', 'kept', path.join(root, 'etc', 'passwd')])
    await execa('setfattr', [
      '-n',
      'security.capability',
      '-v',
      '0x0100000200200000000000000000000000000000',
      path.join(root, 'bin', 'tool'),
    ])
  }
}

async function expectSameTree(from: string, to: string, xattrs: boolean): Promise<void> {
  expect(await snapshot(to)).to.deep.equal(await snapshot(from))
  const [tool, again] = await Promise.all([
    fs.stat(path.join(to, 'bin', 'tool')),
    fs.stat(path.join(to, 'bin', 'tool-again')),
  ])
  expect(tool.ino, 'bin/tool and bin/tool-again are still one file').to.equal(again.ino)
  expect(tool.nlink).to.equal(2)
  if (xattrs) {
    const dump = async (root: string) =>
      (await execa('getfattr', ['--absolute-names', '-d', '-m', '-', '-R', '.'], {cwd: root})).stdout.trim()
    expect(await dump(to)).to.equal(await dump(from))
    expect(await dump(to))
      .to.include('user.wafers="kept"')
      .and.include('security.capability')
  }
}

describe('seeders: dir, tar and busybox fill a new base wafer', function () {
  let box: Sandbox
  useSandbox((created) => {
    box = created
  })

  it('dir copies a tree keeping owners, modes, symlinks, hard links and xattrs', async function () {
    const xattrs = await haveXattrTools(this)
    const source = path.join(box.root, 'tree')
    await makeTree(source, xattrs)
    const run = await box.run(['create', 'base', '--seed', 'dir', '--', source])
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(run.stdout).to.equal(`created base wafer base seeded with dir at ${box.data('base')}`)
    await expectSameTree(source, box.data('base'), xattrs)
    expect(await fs.readFile(path.join(box.wafers, 'base', 'parent')).catch(() => 'none')).to.equal('none')
  })

  it('dir escapes the overlay attributes it copies: the wafer, and its pushed layer, carry them as data', async function () {
    if (!(await haveXattrTools(this))) return
    const source = path.join(box.root, 'tree')
    await fs.mkdir(path.join(source, 'hidden'), {recursive: true})
    await fs.writeFile(path.join(source, 'moved'), 'x')
    await execa('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', path.join(source, 'hidden')])
    await execa('setfattr', ['-n', 'user.overlay.redirect', '-v', '/elsewhere', path.join(source, 'moved')])
    const run = await box.run(['create', 'base', '--seed', 'dir', '--', source])
    expect(run.exitCode, run.stderr).to.equal(0)
    const dump = async (file: string) =>
      (await execa('getfattr', ['--absolute-names', '-d', '-m', '-', file])).stdout
        .split('\n')
        .slice(1)
        .join(' ')
        .trim()
    expect(await dump(box.data('base', 'hidden'))).to.equal('trusted.overlay.overlay.opaque="y"')
    expect(await dump(box.data('base', 'moved'))).to.equal('user.overlay.overlay.redirect="/elsewhere"')
    // Pushed, the attributes travel under their own names, and no .wh..wh..opq hides what a pull puts below.
    const out = path.join(box.root, 'out')
    const push = await box.run(['push', 'base', `oci:${out}:v1`])
    expect(push.exitCode, push.stderr).to.equal(0)
    const script = `
import json, os, sys, tarfile
blob = lambda d: os.path.join(sys.argv[1], 'blobs', *d.split(':'))
index = json.load(open(os.path.join(sys.argv[1], 'index.json')))
manifest = json.load(open(blob(index['manifests'][0]['digest'])))
with tarfile.open(blob(manifest['layers'][0]['digest'])) as tar:
    for m in tar:
        print(m.name, *sorted(f'{k[13:]}={v}' for k, v in m.pax_headers.items() if k.startswith('SCHILY.xattr.')))
`
    const {stdout} = await execa('python3', ['-c', script, out])
    expect(stdout.split('\n')).to.deep.equal([
      '.',
      'hidden trusted.overlay.opaque=y',
      'moved user.overlay.redirect=/elsewhere',
    ])
  })

  it('tar unpacks a rootfs tarball keeping numeric owners, modes, symlinks, hard links and xattrs', async function () {
    const xattrs = await haveXattrTools(this)
    const source = path.join(box.root, 'tree')
    await makeTree(source, xattrs)
    const tarball = path.join(box.root, 'rootfs.tar.gz')
    await execa('tar', [
      '--create',
      '--gzip',
      '--numeric-owner',
      '--xattrs',
      '--xattrs-include=*',
      '--file',
      tarball,
      '--directory',
      source,
      '.',
    ])
    const run = await box.run(['create', 'base', '--seed', 'tar', '--', tarball])
    expect(run.exitCode, run.stderr).to.equal(0)
    await expectSameTree(source, box.data('base'), xattrs)
  })

  it('busybox makes a root that systemd-nspawn runs, and stack --seed creates and mounts it in one go', async function () {
    const run = await box.run(['stack', 'tiny', '--seed', 'busybox'])
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(run.stdout).to.equal(`1 wafer stacked at ${box.stack('tiny')}`)
    expect(said(run.stderr)).to.include('Create wafer tiny and seed it with busybox')
    expect((await box.run(['unstack', 'tiny'])).exitCode).to.equal(0)
    expect((await box.run(['stack', 'child', 'tiny'])).exitCode).to.equal(0)
    const nspawn = await nspawnIn(box.stack('child'), [
      '/bin/sh',
      '-c',
      'echo "jesse:x:1000:1000::/home/jesse:/bin/sh" >> /etc/passwd && ls /bin | wc -l',
    ])
    expect(nspawn.exitCode, nspawn.stderr).to.equal(0)
    expect(Number(nspawn.stdout.trim())).to.be.greaterThan(50)
    expect((await box.run(['unstack', 'child'])).exitCode).to.equal(0)
    expect(await fs.readFile(box.data('child', 'etc', 'passwd'), 'utf8')).to.include('jesse:x:1000')
    expect(await fs.readFile(box.data('tiny', 'etc', 'passwd'), 'utf8')).to.equal('root:x:0:0:root:/root:/bin/sh\n')
  })

  it('create --json prints the new wafer as JSON and nothing else', async function () {
    const run = await box.run(['create', 'tiny', '--seed', 'busybox', '--json'])
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(JSON.parse(run.stdout)).to.deep.equal({
      data: box.data('tiny'),
      name: 'tiny',
      parent: null,
      seeder: 'busybox',
      wafers: ['tiny'],
    })
    expect(run.stderr).to.equal('')
    const child = await box.run(['create', 'child', 'tiny', '--json'])
    expect(JSON.parse(child.stdout)).to.deep.equal({
      data: box.data('child'),
      name: 'child',
      parent: 'tiny',
      seeder: null,
      wafers: ['child', 'tiny'],
    })
    // The busybox base has a machine id, so the child gets its own.
    expect(await fs.readFile(box.data('child', 'etc', 'machine-id'), 'utf8')).to.match(/^[0-9a-f]{32}\n$/)
  })

  describe('refusals create nothing', function () {
    async function expectRefusal(args: string[], message: string): Promise<void> {
      await fs.mkdir(box.wafers, {recursive: true})
      const before = await snapshot(box.root)
      const run = await box.run(args)
      expect(run.exitCode, `exit code of wafers ${args.join(' ')}`).to.equal(1)
      expect(run.stdout).to.equal('')
      expect(said(run.stderr)).to.include(message)
      expect(hasStackTrace(run.stderr), run.stderr).to.equal(false)
      expect(await snapshot(box.root)).to.deep.equal(before)
    }

    it('names the seeders there are when the one asked for does not exist', async function () {
      await expectRefusal(
        ['create', 'base', '--seed', 'nope'],
        'there is no seeder "nope"; there are busybox, dir, tar.',
      )
    })

    it('leaves no wafer when the seeder fails', async function () {
      await expectRefusal(
        ['create', 'base', '--seed', 'dir', '--', path.join(box.root, 'missing')],
        `seeder dir (wafers) failed: ${path.join(box.root, 'missing')} is not a directory.`,
      )
    })

    it('leaves no wafer when the seeder fails half way', async function () {
      const tarball = path.join(box.root, 'broken.tar')
      await fs.writeFile(tarball, 'this is not a tarball\n')
      await expectRefusal(
        ['create', 'base', '--seed', 'tar', '--', tarball],
        `seeder tar (wafers) failed: ${tarball} is not a valid tar: the archive is cut short at its start`,
      )
    })

    it('refuses --seed for a wafer with a parent', async function () {
      await box.wafer('base')
      await expectRefusal(
        ['stack', 'child', 'base', '--seed', 'busybox'],
        '--seed fills a new base wafer, but child would have parent base.',
      )
    })

    it('refuses --seed for a wafer that exists', async function () {
      await box.wafer('base')
      await expectRefusal(
        ['create', 'base', '--seed', 'busybox'],
        'wafer base already exists; --seed only fills a new wafer.',
      )
    })

    it('refuses seeder arguments without --seed', async function () {
      await expectRefusal(
        ['create', 'base', '--', 'bookworm'],
        'arguments after -- go to a seeder, but no --seed was given.',
      )
    })
  })
})
