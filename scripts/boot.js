// The template of dist/boot.js (scripts/bundle.js fills in the two constants below): loads
// dist/core.cjs, all of wafers' code in one file, once per process, and hands each module of it to
// the small files that stand at the modules' own paths in dist/.
//
// Compiling the core is most of what a start costs beyond Node's own, so the compiled code is
// kept between runs, V8's code cache, on every Node (Node 22's module.enableCompileCache covers
// ES modules only, and Node 20 has none). The cache is kept per core (a new build never reuses an
// old build's code), per Node version and per command, since each command compiles its own share of
// the core; V8 checks the rest (its version and flags) and ignores a cache that does not fit. It
// lives in wafers' own node_modules, writable only by whoever may change wafers' code anyway: code
// cached in a shared temporary directory could be planted there by any local user. A run that finds
// no usable cache writes one as it exits; one that cannot (an unprivileged user) runs as before.
import {closeSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, unlinkSync, writeSync} from 'node:fs'
import {createRequire} from 'node:module'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import vm from 'node:vm'

const CORE_DIGEST = ''
const COMMANDS = []

const dist = path.dirname(fileURLToPath(import.meta.url))
const file = path.join(dist, 'core.cjs')
let modules

/** The exports of module `name` of the core (a path relative to dist/, e.g. `commands/stack.js`). */
export async function load(name) {
  modules ??= compile()
  return modules[name]()
}

function compile() {
  const source = readFileSync(file, 'utf8')
  const command = COMMANDS.includes(process.argv[2]) ? process.argv[2] : 'other'
  const cache = path.join(
    dist,
    '..',
    'node_modules',
    '.cache',
    'wafers-code-cache',
    `${CORE_DIGEST}-${process.version}-${process.arch}-${command}.bin`,
  )
  let cachedData
  try {
    cachedData = readFileSync(cache)
  } catch {
    // None yet: this run writes it.
  }

  const script = new vm.Script(
    `(function (exports, require, module, __filename, __dirname, __wafersImport) {${source}\n})`,
    {cachedData, filename: file},
  )
  if (cachedData === undefined || script.cachedDataRejected) process.once('exit', () => keep(script, cache))
  const module = {exports: {}}
  // The core has no import() of its own (see scripts/bundle.js): it imports files through this one.
  const importFile = async (specifier) => import(specifier)
  script.runInThisContext()(module.exports, createRequire(file), module, file, dist, importFile)
  return module.exports
}

/** Writes the code compiled so far as the cache `cache`, in one rename; quietly nothing when it cannot. */
function keep(script, cache) {
  const temporary = `${cache}.${process.pid}.tmp`
  try {
    mkdirSync(path.dirname(cache), {recursive: true})
    const fd = openSync(temporary, 'wx', 0o644)
    try {
      writeSync(fd, script.createCachedData())
    } finally {
      closeSync(fd)
    }

    renameSync(temporary, cache)
    // What earlier builds of wafers cached can never be used again.
    for (const entry of readdirSync(path.dirname(cache))) {
      if (!entry.startsWith(`${CORE_DIGEST}-`)) unlinkSync(path.join(path.dirname(cache), entry))
    }
  } catch {
    try {
      unlinkSync(temporary)
    } catch {
      // Never made.
    }
  }
}
