// The template of dist/boot.js (scripts/bundle.js fills in COMMANDS below): loads dist/core.cjs,
// all of wafers' code in one file, once per process, and hands each module of it to the small
// files that stand at the modules' own paths in dist/.
//
// Compiling the core is most of what a start costs beyond Node's own, so the compiled code is
// kept between runs, V8's code cache, on every Node (Node 22's module.enableCompileCache covers
// ES modules only, and Node 20 has none). The cache is kept per core (named by the digest of the
// bytes read, so an edited core never runs old code), per Node version and per command, since
// each command compiles its own share of the core. V8 checks its version and flags but not the
// data itself, and runs damaged data: each file carries the SHA-256 of its data, checked before V8
// sees it, and is written in one rename after an fsync. It lives in wafers' own node_modules,
// written only by the install's owner: code cached in a shared temporary directory could be
// planted there by any local user, and root's files in a user's install would keep the user from
// updating it. A run that finds no usable cache writes one as it exits; one that cannot runs as
// before.
import {createHash, randomBytes} from 'node:crypto'
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs'
import {createRequire} from 'node:module'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import vm from 'node:vm'

const COMMANDS = []
/** What a cache file starts with, before the SHA-256 of the data that follows. */
const MAGIC = Buffer.from('wafers code cache 1\n')
const SUM = 32

const dist = path.dirname(fileURLToPath(import.meta.url))
const file = path.join(dist, 'core.cjs')
const cacheDir = path.join(dist, '..', 'node_modules', '.cache', 'wafers-code-cache')
let modules

/** The exports of module `name` of the core (a path relative to dist/, e.g. `commands/stack.js`). */
export function load(name) {
  modules ??= compile()
  return modules[name]()
}

function compile() {
  const bytes = readFileSync(file)
  const digest = createHash('sha256').update(bytes).digest('hex').slice(0, 32)
  const command = COMMANDS.includes(process.argv[2]) ? process.argv[2] : 'other'
  const cache = path.join(cacheDir, `${digest}-${process.version}-${process.arch}-${command}.bin`)
  const cachedData = readCache(cache)
  const script = new vm.Script(
    `(function (exports, require, module, __filename, __dirname, __wafersImport) {${bytes.toString('utf8')}\n})`,
    {cachedData, filename: file},
  )
  if (cachedData === undefined || script.cachedDataRejected) process.once('exit', () => keep(script, cache, digest))
  const module = {exports: {}}
  // The core has no import() of its own (see scripts/bundle.js): it imports files through this one.
  const importFile = async (specifier) => import(specifier)
  script.runInThisContext()(module.exports, createRequire(file), module, file, dist, importFile)
  return module.exports
}

/** The V8 data of cache file `cache` when it is whole, else undefined. */
function readCache(cache) {
  let bytes
  try {
    bytes = readFileSync(cache)
  } catch {
    return undefined // none yet: this run writes it
  }

  const start = MAGIC.length + SUM
  if (bytes.length < start || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) return undefined
  const data = bytes.subarray(start)
  const whole = createHash('sha256').update(data).digest().equals(bytes.subarray(MAGIC.length, start))
  return whole ? data : undefined
}

/** Writes the code compiled so far as the cache `cache`; quietly nothing when it cannot. */
function keep(script, cache, digest) {
  let temporary
  try {
    if (statSync(dist).uid !== process.getuid?.()) return
    mkdirSync(cacheDir, {recursive: true})
    temporary = `${cache}.${randomBytes(6).toString('hex')}.tmp`
    const fd = openSync(temporary, 'wx', 0o644)
    try {
      const data = script.createCachedData()
      writeFileSync(fd, Buffer.concat([MAGIC, createHash('sha256').update(data).digest(), data]))
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }

    renameSync(temporary, cache)
    temporary = undefined
    // What other builds of wafers cached can never be used again.
    for (const entry of readdirSync(cacheDir)) {
      if (!entry.startsWith(`${digest}-`)) unlinkSync(path.join(cacheDir, entry))
    }
  } catch {
    if (temporary === undefined) return
    try {
      unlinkSync(temporary)
    } catch {
      // Never made.
    }
  }
}
