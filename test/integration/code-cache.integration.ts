// The built wafers keeps its compiled code between runs (dist/boot.js, V8's code cache): a start
// from the cache must do exactly what a start without it does, a cache that does not fit must be
// ignored and replaced, and a cache that cannot be written must change nothing a user sees.
import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const project = fileURLToPath(new URL('../..', import.meta.url))

describe('the code cache of a start', function () {
  this.timeout(60_000)
  let root: string
  let cacheDir: string
  let env: Record<string, string>

  // A copy of the built package whose node_modules holds links to this checkout's packages, so
  // that its cache (node_modules/.cache) is its own.
  beforeEach(async function () {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-code-cache-'))
    for (const part of ['bin', 'dist', 'package.json', 'oclif.manifest.json']) {
      await fs.cp(path.join(project, part), path.join(root, part), {recursive: true})
    }

    await fs.mkdir(path.join(root, 'node_modules'))
    for (const entry of await fs.readdir(path.join(project, 'node_modules'))) {
      if (entry !== '.cache')
        await fs.symlink(path.join(project, 'node_modules', entry), path.join(root, 'node_modules', entry))
    }

    cacheDir = path.join(root, 'node_modules', '.cache', 'wafers-code-cache')
    env = {
      STACKS: path.join(root, 'stacks'),
      WAFERS: path.join(root, 'wafers'),
      WAFERS_DATA_DIR: path.join(root, 'data'),
    }
    await fs.mkdir(env.WAFERS)
  })

  afterEach(async function () {
    await fs.rm(root, {force: true, recursive: true})
  })

  const wafers = async (...args: string[]) =>
    execa(process.execPath, [path.join(root, 'bin', 'run.js'), ...args], {env, reject: false, stdin: 'ignore'})
  const cached = async () => (await fs.readdir(cacheDir).catch(() => [] as string[])).sort()

  it('writes one cache per command on the first run and starts from it after, with the same output', async function () {
    const first = await wafers('list', '--json')
    expect(first.exitCode, first.stderr).to.equal(0)
    const files = await cached()
    expect(files).to.have.lengthOf(1)
    expect(files[0]).to.match(new RegExp(`^[0-9a-f]{32}-${process.version}-${process.arch}-list\\.bin$`))
    const written = await fs.stat(path.join(cacheDir, files[0]))

    // From the cache, oclif still imports the command's module (an import() the core hands to boot.js).
    const again = await wafers('list', '--json')
    expect(again.exitCode, again.stderr).to.equal(0)
    expect(again.stdout).to.equal(first.stdout)
    expect(again.stderr).to.equal(first.stderr)
    expect((await fs.stat(path.join(cacheDir, files[0]))).mtimeMs).to.equal(written.mtimeMs)

    const version = await wafers('--version')
    expect(version.exitCode, version.stderr).to.equal(0)
    expect(await cached()).to.have.lengthOf(2)
    expect((await cached()).some((file) => file.endsWith('-other.bin'))).to.equal(true)
  })

  it('ignores a cache that does not fit or is damaged, replaces it, and drops what an older build cached', async function () {
    const first = await wafers('list', '--json')
    expect(first.exitCode, first.stderr).to.equal(0)
    const [file] = await cached()
    const whole = await fs.readFile(path.join(cacheDir, file))
    await fs.writeFile(path.join(cacheDir, `${'0'.repeat(32)}-${process.version}-${process.arch}-list.bin`), 'old')
    // Not a cache at all; then a whole one with bytes flipped inside V8's data, which V8 would run.
    const damaged = Buffer.from(whole)
    for (let i = 0; i < 64; i++) damaged[Math.floor(damaged.length / 2) + i] ^= 0xff
    for (const bad of [Buffer.alloc(4096, 7), damaged]) {
      await fs.writeFile(path.join(cacheDir, file), bad)
      const run = await wafers('list', '--json')
      expect(run.exitCode, run.stderr).to.equal(0)
      expect(run.stdout).to.equal(first.stdout)
      expect(await cached()).to.deep.equal([file])
      expect((await fs.readFile(path.join(cacheDir, file))).equals(bad)).to.equal(false)
    }
  })

  it('never runs the cached code of a core that was edited since, even to the same length', async function () {
    env.STACKS = path.join(env.WAFERS, 'stacks')
    const refused = await wafers('list')
    expect(refused.stderr).to.include('; stacks would be mounted over')
    expect(await cached()).to.have.lengthOf(1)
    const core = path.join(root, 'dist', 'core.cjs')
    const text = await fs.readFile(core, 'utf8')
    expect(text.split('; stacks would be mounted over')).to.have.lengthOf(2)
    await fs.writeFile(core, text.replace('; stacks would be mounted over', '; STACKS WOULD BE MOUNTED over'))
    const edited = await wafers('list')
    expect(edited.exitCode).to.equal(refused.exitCode)
    expect(edited.stderr).to.include('; STACKS WOULD BE MOUNTED over')
  })

  it('never runs cached code that someone other than the install owner or root could have written', async function () {
    // What a local user would plant: the cache of a core edited to the same length, which V8
    // takes as the cache of the real one (it checks the length of the source, not its text).
    env.STACKS = path.join(env.WAFERS, 'stacks')
    const honest = await wafers('list')
    expect(honest.stderr).to.include('; stacks would be mounted over')
    const [real] = await cached()
    const core = path.join(root, 'dist', 'core.cjs')
    const text = await fs.readFile(core, 'utf8')
    await fs.writeFile(core, text.replace('; stacks would be mounted over', '; STACKS WOULD BE MOUNTED over'))
    expect((await wafers('list')).stderr).to.include('; STACKS WOULD BE MOUNTED over')
    const [edited] = await cached()
    const planted = await fs.readFile(path.join(cacheDir, edited))
    await fs.writeFile(core, text)
    const elsewhere = path.join(root, 'elsewhere')
    await fs.mkdir(elsewhere)

    const plant = async (how: () => Promise<void>) => {
      await fs.rm(cacheDir, {force: true, recursive: true})
      await fs.mkdir(cacheDir, {mode: 0o755})
      await fs.writeFile(path.join(cacheDir, real), planted, {mode: 0o644})
      await how()
      return (await wafers('list')).stderr
    }

    // The owner's (here root's) own file is trusted: that planted data runs is why the rest matters.
    expect(await plant(async () => {})).to.include('; STACKS WOULD BE MOUNTED over')
    const refusals: Record<string, () => Promise<void>> = {
      'a cache directory anyone may write to': () => fs.chmod(cacheDir, 0o777),
      'a cache directory another user owns': () => fs.chown(cacheDir, 1000, 1000),
      async 'a cache directory that is a symlink'() {
        await fs.rename(path.join(cacheDir, real), path.join(elsewhere, real))
        await fs.rmdir(cacheDir)
        await fs.symlink(elsewhere, cacheDir)
      },
      'a file another user owns': () => fs.chown(path.join(cacheDir, real), 1000, 1000),
      'a file its group may write to': () => fs.chmod(path.join(cacheDir, real), 0o664),
      async 'a symlink to the file'() {
        await fs.rename(path.join(cacheDir, real), path.join(elsewhere, real))
        await fs.symlink(path.join(elsewhere, real), path.join(cacheDir, real))
      },
    }
    for (const [shape, how] of Object.entries(refusals)) {
      const stderr = await plant(how)
      expect(stderr, shape).to.include('; stacks would be mounted over')
      expect(stderr, shape).not.to.include('STACKS WOULD BE')
      await fs.rm(cacheDir, {force: true, recursive: true})
      await fs.rm(path.join(elsewhere, real), {force: true})
    }
  })

  it("lets Node's require() load 'wafers', as a CommonJS plugin would", async function () {
    const script = `const wafers = require(${JSON.stringify(path.join(root, 'dist', 'index.js'))}); console.log(typeof wafers.WaferStore, new wafers.WafersError('x.').message)`
    const run = await execa(process.execPath, ['-e', script], {env, reject: false})
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(run.stdout).to.equal('function x.')
  })

  it('runs as before, and says nothing of it, when the cache cannot be written', async function () {
    // A file where the cache directory would be: nothing can be made there, whoever runs wafers.
    await fs.writeFile(path.join(root, 'node_modules', '.cache'), '')
    const run = await wafers('list', '--json')
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(run.stderr).to.equal('')
    expect(JSON.parse(run.stdout)).to.deep.equal([])
  })

  it("writes no cache into an install another user owns (root's files there would block its updates)", async function () {
    await fs.chown(path.join(root, 'dist'), 1000, 1000)
    const run = await wafers('list', '--json')
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(JSON.parse(run.stdout)).to.deep.equal([])
    expect(await cached()).to.deep.equal([])
    expect(await fs.readdir(path.join(root, 'node_modules', '.cache')).catch(() => [])).to.deep.equal([])
  })

  it("makes again a cache directory of its owner's that others may write to, and keeps no other cache", async function () {
    // What an older wafers left under a umask of 002: a directory its group may write to.
    await fs.mkdir(cacheDir, {mode: 0o775, recursive: true})
    await fs.chmod(cacheDir, 0o775)
    await fs.writeFile(path.join(cacheDir, 'planted'), 'x')
    const run = await wafers('--help')
    expect(run.exitCode, run.stderr).to.equal(0)
    const stat = await fs.lstat(cacheDir)
    expect(stat.mode & 0o022).to.equal(0)
    expect(await fs.readdir(cacheDir)).not.to.include('planted')
    const files = await cached()
    expect(files).to.have.lengthOf(1)
    expect(files[0]).to.match(/-other\.bin$/)
    // Node 22's own compile cache is not turned on: nothing else in node_modules/.cache.
    expect(await fs.readdir(path.join(root, 'node_modules', '.cache'))).to.deep.equal(['wafers-code-cache'])

    // A subdirectory in it (a delete that recursed could follow a symlink swapped in for one):
    // nothing under it is touched, and the directory stays untrusted, so no cache is used.
    await fs.rm(cacheDir, {recursive: true})
    await fs.mkdir(path.join(cacheDir, 'sub'), {recursive: true})
    await fs.writeFile(path.join(cacheDir, 'sub', 'kept'), 'x')
    await fs.chmod(cacheDir, 0o775)
    const again = await wafers('--help')
    expect(again.exitCode, again.stderr).to.equal(0)
    expect(again.stdout).to.equal(run.stdout)
    expect((await fs.lstat(cacheDir)).mode & 0o777).to.equal(0o775)
    expect(await fs.readFile(path.join(cacheDir, 'sub', 'kept'), 'utf8')).to.equal('x')
    expect((await cached()).filter((file) => file.endsWith('.bin'))).to.deep.equal([])
  })
})
