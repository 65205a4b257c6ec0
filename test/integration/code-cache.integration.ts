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
      if (entry !== '.cache') await fs.symlink(path.join(project, 'node_modules', entry), path.join(root, 'node_modules', entry))
    }

    cacheDir = path.join(root, 'node_modules', '.cache', 'wafers-code-cache')
    env = {STACKS: path.join(root, 'stacks'), WAFERS: path.join(root, 'wafers'), WAFERS_DATA_DIR: path.join(root, 'data')}
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

  it('ignores a cache that does not fit, replaces it, and drops what an older build cached', async function () {
    expect((await wafers('list', '--json')).exitCode).to.equal(0)
    const [file] = await cached()
    await fs.writeFile(path.join(cacheDir, file), Buffer.alloc(4096, 7))
    await fs.writeFile(path.join(cacheDir, `${'0'.repeat(32)}-${process.version}-${process.arch}-list.bin`), 'old')

    const run = await wafers('list', '--json')
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(JSON.parse(run.stdout)).to.deep.equal([])
    expect(await cached()).to.deep.equal([file])
    expect((await fs.readFile(path.join(cacheDir, file))).equals(Buffer.alloc(4096, 7))).to.equal(false)
  })

  it('runs as before, and says nothing of it, when the cache cannot be written', async function () {
    // A file where the cache directory would be: nothing can be made there, whoever runs wafers.
    await fs.writeFile(path.join(root, 'node_modules', '.cache'), '')
    const run = await wafers('list', '--json')
    expect(run.exitCode, run.stderr).to.equal(0)
    expect(run.stderr).to.equal('')
    expect(JSON.parse(run.stdout)).to.deep.equal([])
  })
})
