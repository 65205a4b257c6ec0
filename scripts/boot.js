// The template of dist/boot.js (scripts/bundle.js fills in COMMANDS below): loads dist/core.cjs,
// all of wafers' code in one file, once per process, and hands each module of it to the small
// files that stand at the modules' own paths in dist/.
//
// Compiling the core is most of what a start costs beyond Node's own, so the compiled code is
// kept between runs, V8's code cache, on every Node (Node 22's module.enableCompileCache covers
// ES modules only, and Node 20 has none). The cache is kept per core (named by the digest of the
// bytes read, so an edited core never runs old code), per Node version and per command, since
// each command compiles its own share of the core. V8 checks its version, its flags and the
// length of the source, but not the data itself, and runs whatever it is given: each file carries
// the SHA-256 of its data, checked before V8 sees it, and is written in one rename after an fsync.
//
// Cached code is code: it runs with the rights of whoever runs wafers, root as a rule. So the
// cache lives in wafers' own node_modules/.cache, is written only by the install's owner (dist/'s),
// and is read only from a directory and files that the owner or root owns and no one else may
// write to. Code cached in a shared temporary directory, or a file another user could swap, would
// let any local user plant code; root's files in a user's install would keep the user from
// updating it. A run that finds no usable cache writes one as it exits, when it may; one that
// cannot runs as before.
import {createHash, randomBytes} from 'node:crypto'
import {
  closeSync,
  constants,
  fchmodSync,
  fstatSync,
  fsyncSync,
  lstatSync,
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
  const name = `${digest}-${process.version}-${process.arch}-${command}.bin`
  const cachedData = readCache(name)
  const script = new vm.Script(
    `(function (exports, require, module, __filename, __dirname, __wafersImport) {${bytes.toString('utf8')}\n})`,
    {cachedData, filename: file},
  )
  if (cachedData === undefined || script.cachedDataRejected) process.once('exit', () => keep(script, name, digest))
  const module = {exports: {}}
  // The core has no import() of its own (see scripts/bundle.js): it imports files through this one.
  const importFile = async (specifier) => import(specifier)
  script.runInThisContext()(module.exports, createRequire(file), module, file, dist, importFile)
  return module.exports
}

/**
 * Whether this process is the install's owner and may keep code in the cache directory (made
 * when missing). A directory of the owner's that others may write to (made by an older wafers
 * under a umask of 002) is emptied and closed to them first: what is in it cannot be trusted.
 */
function mayKeepCache() {
  try {
    const uid = process.getuid?.()
    if (installOwner() !== uid) return false
    mkdirSync(cacheDir, {mode: 0o755, recursive: true})
    let stat = lstatSync(cacheDir)
    if (stat.isDirectory() && stat.uid === uid && !trusted(stat)) {
      emptyAndClose(cacheDir)
      stat = lstatSync(cacheDir)
    }

    return stat.isDirectory() && trusted(stat)
  } catch {
    return false
  }
}

/**
 * Closes the owner's directory `dir` to others (fchmod through a descriptor, never a path a
 * symlink could stand in for), then deletes its entries one by one, never recursing: others could
 * write to it until now, so nothing in it is trusted, and a delete that followed a subdirectory
 * they swapped for a symlink would delete elsewhere. A subdirectory stops it (unlink refuses one),
 * and the directory gets its old mode back: it stays untrusted.
 */
function emptyAndClose(dir) {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  try {
    const {mode, uid} = fstatSync(fd)
    if (uid !== process.getuid?.()) return
    fchmodSync(fd, 0o755)
    const held = `/proc/self/fd/${fd}`
    try {
      for (const entry of readdirSync(held)) unlinkSync(path.join(held, entry))
    } catch (error) {
      fchmodSync(fd, mode & 0o7777) // not emptied: left as untrusted as it was
      throw error
    }
  } finally {
    closeSync(fd)
  }
}

let owner
/** The uid that owns dist/: whoever installed or built wafers, the only one who writes its caches. */
function installOwner() {
  owner ??= statSync(dist).uid
  return owner
}

/** Whether `stat` is of a file or directory only the install's owner (or root) can have written. */
function trusted(stat) {
  return (stat.uid === installOwner() || stat.uid === 0) && (stat.mode & 0o022) === 0
}

/**
 * Runs `use` with a path that names the code cache directory as it is now, held open (a
 * /proc/self/fd path), when it is a real directory that `trusted` allows; undefined otherwise. A
 * directory swapped or linked in after the check is never the one read or written.
 */
function withCacheDir(use) {
  let fd
  try {
    fd = openSync(cacheDir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  } catch {
    return undefined
  }

  try {
    return trusted(fstatSync(fd)) ? use(`/proc/self/fd/${fd}`) : undefined
  } finally {
    closeSync(fd)
  }
}

/** The V8 data of cache file `name` when it is trusted and whole, else undefined. */
function readCache(name) {
  try {
    return withCacheDir((dir) => {
      const fd = openSync(path.join(dir, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
      try {
        const stat = fstatSync(fd)
        return stat.isFile() && trusted(stat) ? wholeData(readFileSync(fd)) : undefined
      } finally {
        closeSync(fd)
      }
    })
  } catch {
    return undefined // none yet: this run writes it
  }
}

/** The data of the bytes of a cache file, when they are whole. */
function wholeData(bytes) {
  const start = MAGIC.length + SUM
  if (bytes.length < start || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) return undefined
  const data = bytes.subarray(start)
  const whole = createHash('sha256').update(data).digest().equals(bytes.subarray(MAGIC.length, start))
  return whole ? data : undefined
}

/** Writes the code compiled so far as the cache file `name`; quietly nothing when it may not or cannot. */
function keep(script, name, digest) {
  if (!mayKeepCache()) return
  try {
    withCacheDir((dir) => write(dir, script, name, digest))
  } catch {
    // It runs as the process exits: nothing may escape (dist/ gone under an update, say).
  }
}

/** Writes cache file `name` into the held cache directory `dir`, in one rename. */
function write(dir, script, name, digest) {
  let temporary
  try {
    temporary = path.join(dir, `${name}.${randomBytes(6).toString('hex')}.tmp`)
    const fd = openSync(temporary, 'wx', 0o644)
    try {
      const data = script.createCachedData()
      writeFileSync(fd, Buffer.concat([MAGIC, createHash('sha256').update(data).digest(), data]))
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }

    renameSync(temporary, path.join(dir, name))
    temporary = undefined
    // What other builds of wafers cached can never be used again.
    for (const entry of readdirSync(dir)) {
      if (!entry.startsWith(`${digest}-`)) unlinkSync(path.join(dir, entry))
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
