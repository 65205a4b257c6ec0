import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import http from 'node:http'
import type {AddressInfo} from 'node:net'
import os from 'node:os'
import path from 'node:path'

import {
  FALLBACK_MIRROR,
  parseDeb822,
  parseOneLine,
  pickMirror,
  readAptSources,
} from '../../plugins/debian/src/apt-sources.js'
import {
  cacheDirOf,
  debootstrapArgs,
  fetchRelease,
  forgetHostIdentity,
  parseDebootstrapArgs,
} from '../../plugins/debian/src/debootstrap.js'
import {pacstrapArgs} from '../../plugins/debian/src/pacstrap.js'
import {RootfsCache} from '../../plugins/debian/src/rootfs-cache.js'
import {execa} from 'execa'

import type {SeedContext, SeedRunOptions} from '../../src/lib/hooks.js'
import {runStreaming} from '../../src/lib/host/run.js'
import {seed} from '../../src/lib/seed/seed.js'
import {closedPort} from '../helpers/net.js'
import {treeListing} from '../helpers/tree.js'

describe('wafers-plugin-debian-arch', function () {
  describe('the default mirror, from the host apt sources', function () {
    const deb822 = `Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: trixie
Components: main
`

    it('reads deb822 stanzas, skipping disabled ones and deb-src only ones', function () {
      expect(parseDeb822(deb822)).to.deep.equal([
        {
          components: ['main', 'contrib'],
          suites: ['bookworm', 'bookworm-updates'],
          uri: 'http://mirror.example/debian/',
        },
        {components: ['main'], suites: ['bookworm-security'], uri: 'http://deb.debian.org/debian-security'},
      ])
    })

    it('reads one-line sources with options and comments', function () {
      const text =
        '# deb http://old.example/debian buster main\ndeb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian trixie main non-free\ndeb-src http://src.example/debian trixie main\n'
      expect(parseOneLine(text)).to.deep.equal([
        {components: ['main', 'non-free'], suites: ['trixie'], uri: 'http://ftp.example/debian'},
      ])
    })

    it('picks the first source serving the suite with main, else deb.debian.org', function () {
      const sources = [
        {components: ['main'], suites: ['nodistro'], uri: 'https://deb.nodesource.com/node_20.x'},
        ...parseDeb822(deb822),
      ]
      expect(pickMirror(sources, 'bookworm')).to.equal('http://mirror.example/debian')
      expect(pickMirror(sources, 'trixie')).to.equal(FALLBACK_MIRROR)
    })

    it('reads sources.list, then sources.list.d/*.list and *.sources in order, ignoring other files', async function () {
      const etc = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-apt-'))
      try {
        await fs.mkdir(path.join(etc, 'sources.list.d'))
        await fs.writeFile(path.join(etc, 'sources.list'), 'deb http://one.example/debian bookworm main\n')
        await fs.writeFile(
          path.join(etc, 'sources.list.d', 'b.sources'),
          'Types: deb\nURIs: http://three.example/debian\nSuites: sid\nComponents: main\n',
        )
        await fs.writeFile(path.join(etc, 'sources.list.d', 'a.list'), 'deb http://two.example/debian trixie main\n')
        await fs.writeFile(
          path.join(etc, 'sources.list.d', 'c.sources.disabled'),
          'Types: deb\nURIs: http://no.example/\nSuites: x\n',
        )
        expect((await readAptSources(etc)).map((source) => source.uri)).to.deep.equal([
          'http://one.example/debian',
          'http://two.example/debian',
          'http://three.example/debian',
        ])
      } finally {
        await fs.rm(etc, {force: true, recursive: true})
      }
    })
  })

  describe('debootstrap arguments', function () {
    it('takes the suite, then the mirror, and passes options through', function () {
      expect(
        parseDebootstrapArgs(['bookworm', '--variant=minbase', 'http://m.example/debian', '--include=curl']),
      ).to.deep.equal({
        fresh: false,
        mirror: 'http://m.example/debian',
        options: ['--variant=minbase', '--include=curl'],
        suite: 'bookworm',
      })
      expect(parseDebootstrapArgs([])).to.deep.equal({fresh: false, mirror: undefined, options: [], suite: undefined})
      expect(parseDebootstrapArgs(['sid', '--fresh'])).to.deep.equal({
        fresh: true,
        mirror: undefined,
        options: [],
        suite: 'sid',
      })
    })

    it('refuses a third word and options not written --name=value', function () {
      expect(() => parseDebootstrapArgs(['a', 'b', 'c'])).to.throw(
        'debootstrap takes a suite and a mirror, then options; got 3 words (a b c)',
      )
      expect(() => parseDebootstrapArgs(['bookworm', '-v'])).to.throw(
        'debootstrap options must be written --name=value; got "-v"',
      )
    })

    it('caches .debs under /var/cache/wafers unless a cache dir is given', function () {
      expect(debootstrapArgs('/w/.create-x/data', 'bookworm', 'http://m/debian', ['--variant=minbase'])).to.deep.equal([
        '--cache-dir=/var/cache/wafers/debootstrap',
        '--variant=minbase',
        'bookworm',
        '/w/.create-x/data',
        'http://m/debian',
      ])
      expect(debootstrapArgs('/t', 'sid', 'http://m', ['--cache-dir=/c'])).to.deep.equal([
        '--cache-dir=/c',
        'sid',
        '/t',
        'http://m',
      ])
      expect(cacheDirOf(['--variant=minbase'])).to.equal('/var/cache/wafers/debootstrap')
      expect(cacheDirOf(['--cache-dir=/c'])).to.equal('/c')
    })

    const run = (file: string, args: string[], options?: SeedRunOptions) => runStreaming(file, args, () => {}, options)

    it('reports an unreachable mirror as a network failure', async function () {
      const port = await closedPort()
      const failure = await fetchRelease(run, `http://127.0.0.1:${port}/debian`, 'bookworm', 5).then(
        () => undefined,
        (error: Error) => error,
      )
      expect(failure?.message).to.equal(
        `network failure: cannot reach the mirror http://127.0.0.1:${port}/debian (Connection refused); check the network or give another mirror`,
      )
    })

    it('reports a suite the mirror does not have as such', async function () {
      const server = http.createServer((_, response) => response.writeHead(404).end())
      await new Promise<void>((resolve) => {
        server.listen(0, '127.0.0.1', resolve)
      })
      try {
        const mirror = `http://127.0.0.1:${(server.address() as AddressInfo).port}/debian`
        const failure = await fetchRelease(run, mirror, 'nosuch', 5).then(
          () => undefined,
          (error: Error) => error,
        )
        expect(failure?.message).to.equal(
          `the mirror ${mirror} has no suite nosuch (${mirror}/dists/nosuch/Release not found)`,
        )
      } finally {
        server.close()
      }
    })
  })

  describe("the host's identity in a seeded root", function () {
    let dir: string

    beforeEach(async function () {
      dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-identity-'))
    })

    afterEach(async function () {
      await fs.rm(dir, {force: true, recursive: true})
    })

    it('empties the hostname and resolv.conf debootstrap copied from the host, replacing a symlink unfollowed', async function () {
      const victim = path.join(dir, 'victim')
      await fs.writeFile(victim, 'nameserver 127.0.0.53\n')
      await fs.mkdir(path.join(dir, 'root', 'etc'), {recursive: true})
      await fs.writeFile(path.join(dir, 'root', 'etc', 'hostname'), `${os.hostname()}\n`)
      await fs.symlink(victim, path.join(dir, 'root', 'etc', 'resolv.conf'))
      await fs.writeFile(path.join(dir, 'root', 'etc', 'hosts'), '127.0.0.1 localhost\n')
      await forgetHostIdentity(path.join(dir, 'root'))
      for (const name of ['hostname', 'resolv.conf']) {
        const stat = await fs.lstat(path.join(dir, 'root', 'etc', name))
        expect(stat.isFile(), name).to.equal(true)
        expect(stat.size, name).to.equal(0)
      }

      expect(await fs.readFile(victim, 'utf8')).to.equal('nameserver 127.0.0.53\n')
      expect(await fs.readFile(path.join(dir, 'root', 'etc', 'hosts'), 'utf8')).to.equal('127.0.0.1 localhost\n')
      // Again on a clean root, and on a root with no etc: nothing to do, nothing made.
      await forgetHostIdentity(path.join(dir, 'root'))
      await fs.mkdir(path.join(dir, 'bare'))
      await forgetHostIdentity(path.join(dir, 'bare'))
      expect(await fs.readdir(path.join(dir, 'bare'))).to.deep.equal([])
    })
  })

  describe('pacstrap arguments', function () {
    it('puts pacstrap flags first, then -d, the target, packages and pacman flags', function () {
      expect(pacstrapArgs('/t', ['base', '--ignore', 'linux', '--ignore', 'linux-firmware'])).to.deep.equal([
        '-d',
        '/t',
        'base',
        '--ignore',
        'linux',
        '--ignore',
        'linux-firmware',
      ])
      expect(pacstrapArgs('/t', ['-c', '-C', '/etc/my-pacman.conf', '-cdi', 'base', 'vim'])).to.deep.equal([
        '-c',
        '-C',
        '/etc/my-pacman.conf',
        '-cdi',
        '-d',
        '/t',
        'base',
        'vim',
      ])
    })

    it('installs base when no package is named', function () {
      expect(pacstrapArgs('/t', [])).to.deep.equal(['-d', '/t', 'base'])
      expect(pacstrapArgs('/t', ['-K', '--needed'])).to.deep.equal(['-K', '-d', '/t', 'base', '--needed'])
    })

    it('refuses -C without a config file', function () {
      expect(() => pacstrapArgs('/t', ['-C'])).to.throw("pacstrap's -C needs a value")
    })
  })

  describe('the cached root file system', function () {
    let dir: string

    before(function () {
      // Owners and trusted.* attributes are root's to set.
      if (process.getuid?.() !== 0) this.skip()
    })

    beforeEach(async function () {
      dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-rootfs-'))
    })

    afterEach(async function () {
      await fs.rm(dir, {force: true, recursive: true})
    })

    /** Runs `work` as wafers runs a seeder, on the new wafer's data directory `dataDir`. */
    const seeding = async (dataDir: string, work: (ctx: SeedContext) => Promise<void>) => {
      await fs.mkdir(dataDir, {recursive: true})
      const seeder = {name: 'cache-test', seed: work, summary: ''}
      await seed(
        {args: [], entry: {name: 'cache-test', plugin: 'test', seeder, summary: '', usage: ''}},
        'w',
        dataDir,
        () => {},
      )
    }

    it("is unpacked by wafers' own reader: what GNU tar packed comes back, overlay's own attributes escaped", async function () {
      const source = path.join(dir, 'source')
      for (const sub of ['etc', 'usr/bin', 'usr/lib', 'home/user', 'hidden'])
        await fs.mkdir(path.join(source, sub), {recursive: true})
      await fs.writeFile(path.join(source, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n')
      await fs.writeFile(path.join(source, 'usr', 'bin', 'su'), 'setuid\n')
      await fs.chmod(path.join(source, 'usr', 'bin', 'su'), 0o4755)
      await fs.chown(path.join(source, 'home', 'user'), 1000, 1000)
      await fs.chmod(path.join(source, 'home', 'user'), 0o750)
      await fs.symlink('usr/lib', path.join(source, 'lib'))
      await fs.link(path.join(source, 'etc', 'passwd'), path.join(source, 'usr', 'lib', 'passwd-link'))
      await execa('setfattr', ['-n', 'user.note', '-v', 'kept', path.join(source, 'etc', 'passwd')])
      // An opaque mark from the cache must not make the wafer's directory hide layers below.
      await execa('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', path.join(source, 'hidden')])
      const cache = new RootfsCache(path.join(dir, 'cache'))
      const entry = cache.entry({suite: 'test'}, 'Release\n')
      await seeding(path.join(dir, 'packing'), (ctx) => cache.store(ctx, entry, source))
      const data = path.join(dir, 'data')
      let restored = false
      await seeding(data, async (ctx) => {
        restored = await cache.restore(ctx, entry.file)
      })
      expect(restored).to.equal(true)
      expect(await treeListing(data)).to.deep.equal(await treeListing(source))
      const attributes = (await execa('getfattr', ['-d', '-m', '-', '--absolute-names', path.join(data, 'hidden')]))
        .stdout
      expect(attributes).to.include('trusted.overlay.overlay.opaque="y"')
      expect(attributes).to.not.match(/^trusted\.overlay\.opaque=/m)
    })

    it('refuses a cached tar that tar programs read two ways, naming the entry', async function () {
      const cache = new RootfsCache(path.join(dir, 'cache'))
      const entry = cache.entry({suite: 'test'}, 'Release\n')
      await fs.mkdir(cache.dir)
      // A pax record with two blanks before its key: GNU tar reads it as a rename, another reader not at all.
      await execa('python3', [
        '-c',
        `import sys, tarfile, io
record = b'14  path=zzz/\\n'
with open(sys.argv[1], 'wb') as out:
    pax = tarfile.TarInfo('PaxHeader'); pax.type = tarfile.XHDTYPE; pax.size = len(record)
    out.write(pax.tobuf(format=tarfile.USTAR_FORMAT)); out.write(record + bytes(512 - len(record)))
    d = tarfile.TarInfo('a/'); d.type = tarfile.DIRTYPE; d.mode = 0o777
    out.write(d.tobuf(format=tarfile.USTAR_FORMAT)); out.write(bytes(1024))`,
        entry.file,
      ])
      const data = path.join(dir, 'data')
      const error = await seeding(data, async (ctx) => {
        await cache.restore(ctx, entry.file)
      }).catch((error_: unknown) => error_ as Error)
      expect(error?.message).to.match(/its entry "a\/" has a malformed pax header/)
      expect(await fs.readdir(data)).to.deep.equal([])
    })
  })

  describe('wafers:prune', function () {
    it('offers finished cached root file systems with their sizes, never a partial one or a symlink, and deletes one when asked', async function () {
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-rootfs-cache-'))
      try {
        await fs.writeFile(path.join(dir, 'rootfs-a-1.tar'), 'x'.repeat(10_000))
        await fs.writeFile(path.join(dir, 'rootfs-b-2.tar.1234abcd.partial'), 'being written')
        await fs.symlink('/etc/passwd', path.join(dir, 'rootfs-c-3.tar'))
        const candidates = await new RootfsCache(dir).prunable()
        expect(candidates.map(({name, path: file}) => ({file, name}))).to.deep.equal([
          {file: path.join(dir, 'rootfs-a-1.tar'), name: 'debootstrap root file system rootfs-a-1.tar'},
        ])
        expect(candidates[0].size).to.be.at.least(10_000)
        await candidates[0].remove()
        expect((await fs.readdir(dir)).sort()).to.deep.equal(['rootfs-b-2.tar.1234abcd.partial', 'rootfs-c-3.tar'])
        expect(await new RootfsCache(path.join(dir, 'missing')).prunable()).to.deep.equal([])
      } finally {
        await fs.rm(dir, {force: true, recursive: true})
      }
    })
  })
})
