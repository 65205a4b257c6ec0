import {createHash} from 'node:crypto'
import {
  type Stats,
  closeSync,
  constants,
  createReadStream,
  promises as fs,
  fstatSync,
  lstatSync,
  openSync,
  readSync,
  readdirSync,
} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {readStoreFile} from '../host/files.js'
import {resolveInRoot} from './paths.js'

/** One `.dockerignore` pattern, compiled. */
interface IgnoreRule {
  exclude: boolean
  regex: RegExp
}

/** Which paths of a build context are left out (`.dockerignore`). */
export class IgnoreRules {
  constructor(private readonly rules: IgnoreRule[] = []) {}

  /** Reads `CONTEXT/.dockerignore` (or none); refuses it as a symlink, FIFO or huge file. */
  static load(context: string): IgnoreRules {
    const text = readStoreFile(path.join(context, '.dockerignore'), 'the .dockerignore of the build context')
    return text === undefined ? new IgnoreRules() : IgnoreRules.parse(text)
  }

  /** Parses `.dockerignore` text as Docker does: `#` comments, `!` exceptions, `**`, leading `/` ignored. */
  static parse(text: string): IgnoreRules {
    const rules: IgnoreRule[] = []
    for (const raw of text.split('\n')) {
      let line = raw.trim()
      if (line === '' || line.startsWith('#')) continue
      const exclude = !line.startsWith('!')
      if (!exclude) line = line.slice(1).trim()
      line = path.posix.normalize(line).replace(/^\/+/, '').replace(/\/+$/, '')
      if (line === '' || line === '.') continue
      rules.push({exclude, regex: globRegex(line)})
    }

    return new IgnoreRules(rules)
  }

  /** Whether `rel` (a path relative to the context) is left out: the last rule matching it or a parent wins. */
  /** Whether some `!` rule may keep a path inside a directory that is itself left out. */
  get hasExceptions(): boolean {
    return this.rules.some((rule) => !rule.exclude)
  }

  ignores(rel: string): boolean {
    // The context itself is always sent, as Docker sends it: `*` with `!keep` leaves `.` with keep in it.
    if (this.rules.length === 0 || rel === '' || rel === '.') return false
    const parents: string[] = []
    const parts = rel.split('/')
    for (let i = 1; i <= parts.length; i++) parents.push(parts.slice(0, i).join('/'))
    let ignored = false
    for (const rule of this.rules) {
      if (parents.some((p) => rule.regex.test(p))) ignored = rule.exclude
    }

    return ignored
  }
}

/** Whether `text` has glob characters (`*`, `?`, `[`). */
export function isGlob(text: string): boolean {
  return /[*?[]/.test(text)
}

/** A glob as Go's filepath.Match reads it (`*` and `?` stop at `/`), plus `**` for any number of directories. */
export function globRegex(glob: string): RegExp {
  let out = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]
    if (c === '*') {
      if (glob[i + 1] === '*') {
        i++
        if (glob[i + 1] === '/') {
          i++
          out += '(?:.*/)?'
        } else out += '.*'
      } else out += '[^/]*'
    } else if (c === '?') out += '[^/]'
    else if (c === '[') {
      const close = glob.indexOf(']', i + 2)
      if (close === -1) throw new WafersError(`bad pattern ${glob}: unmatched [.`)
      let inner = glob.slice(i + 1, close)
      if (inner.startsWith('^') || inner.startsWith('!')) inner = '^' + inner.slice(1)
      out += `[${inner.replaceAll('\\', '\\\\')}]`
      i = close
    } else if (c === '\\' && i + 1 < glob.length) {
      out += escapeRegex(glob[++i])
    } else out += escapeRegex(c)
  }

  return new RegExp(`^${out}$`)
}

function escapeRegex(c: string): string {
  return /[.+^${}()|[\]\\/]/.test(c) ? `\\${c}` : c
}

/** One thing COPY/ADD puts into the new wafer. */
export interface CopyEntry {
  kind: 'dir' | 'file' | 'symlink'
  /** Mode bits of the source (permissions, setuid etc.). */
  mode: number
  mtime: Date
  /** The source's owner: what COPY --from of a stage or image keeps when no --chown is given. */
  owner: {gid: number; uid: number}
  /** Where it goes, relative to the destination ('' is the destination itself). */
  rel: string
  /** The source on the host (or in a stage's tree). */
  source: string
  /** The source's own path relative to its root, for messages. */
  from: string
  /** Whether a source named it (rather than being inside a named directory): ADD unpacks those. */
  named: boolean
  /** The last component of the source as named (a link keeps its own name, as Docker copies it). */
  name: string
}

/** What a COPY/ADD copies: the entries, and whether the destination is a directory. */
export interface CopyPlan {
  destIsDir: boolean
  entries: CopyEntry[]
}

/**
 * Lists what `sources` (paths or globs relative to `root`) name, as Docker's COPY reads them:
 * a directory's contents (not the directory itself), a file as itself. Symbolic links are followed
 * only within `root` for the named sources, and copied as links inside directories, so nothing
 * outside `root` is ever read. Paths `ignore` leaves out are not there.
 */
export function planCopy(root: string, sources: string[], dest: string, ignore: IgnoreRules, what: string): CopyPlan {
  const named: string[] = []
  for (const source of sources) {
    if (isGlob(source)) {
      const regex = globRegex(path.posix.normalize(source).replace(/^\/+/, ''))
      const matches = walk(root, '', ignore).filter((rel) => regex.test(rel))
      if (matches.length === 0) throw new WafersError(`no file in ${what} matches ${source}.`)
      named.push(...matches)
    } else named.push(source)
  }

  const destIsDir = dest.endsWith('/') || named.length > 1 || sources.some((s) => isGlob(s))
  const entries: CopyEntry[] = []
  for (const source of named) {
    const real = resolveInRoot(root, source)
    const rel = path.relative(root, real)
    let stat: Stats
    try {
      if (ignore.ignores(rel)) throw Object.assign(new Error('ignored'), {code: 'ENOENT'})
      stat = lstatSync(real)
    } catch (error) {
      if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) {
        throw new WafersError(
          `${source} is not in ${what}${ignore === NO_IGNORE ? '' : ' (or .dockerignore leaves it out)'}.`,
        )
      }

      throw error
    }

    if (stat.isDirectory()) {
      entries.push(entryOf(real, '', stat, rel, true, baseName(source)))
      for (const inner of walk(root, rel, ignore)) {
        const file = path.join(root, inner)
        entries.push(entryOf(file, path.relative(rel, inner), lstatSync(file), inner, false, path.basename(inner)))
      }
    } else {
      const name = baseName(source)
      entries.push(entryOf(real, destIsDir ? name : '', stat, rel, true, name))
    }
  }

  return {destIsDir: destIsDir || entries.some((e) => e.rel === '' && e.kind === 'dir'), entries}
}

/** No rules: for COPY --from, whose source is another stage's tree. */
export const NO_IGNORE = new IgnoreRules()

/** The last component of `source` as the Containerfile names it. */
function baseName(source: string): string {
  return path.posix.basename(path.posix.normalize(`/${source}`)) || '/'
}

function entryOf(source: string, rel: string, stat: Stats, from: string, named: boolean, name: string): CopyEntry {
  const kind = stat.isDirectory() ? 'dir' : stat.isSymbolicLink() ? 'symlink' : stat.isFile() ? 'file' : undefined
  if (kind === undefined)
    throw new WafersError(`${from} is not a file, directory or symbolic link; COPY takes only those.`)
  return {
    from,
    kind,
    mode: stat.mode & 0o7777,
    mtime: stat.mtime,
    name,
    named,
    owner: {gid: stat.gid, uid: stat.uid},
    rel,
    source,
  }
}

/** Every path under `root/dir` (relative to root, sorted, depth first) that `ignore` keeps; links are not followed. */
function walk(root: string, dir: string, ignore: IgnoreRules): string[] {
  const out: string[] = []
  // A directory left out is still looked into when a `!` rule may keep something inside it (as
  // Docker does); it is then sent only for what it holds that is kept.
  const visit = (rel: string): boolean => {
    let kept = false
    for (const name of readdirSync(path.join(root, rel)).sort()) {
      const child = rel === '' ? name : `${rel}/${name}`
      const ignored = ignore.ignores(child)
      const isDir = lstatSync(path.join(root, child)).isDirectory()
      if (ignored && !(isDir && ignore.hasExceptions)) continue
      const at = out.length
      out.push(child)
      const inner = isDir ? visit(child) : false
      if (ignored && !inner) out.splice(at)
      else kept = true
    }

    return kept
  }

  visit(dir)
  return out
}

/**
 * A digest of everything a copy plan puts into a wafer (paths, kinds, modes, contents, link
 * targets), for the cache key: equal digests copy equal trees.
 */
export async function hashPlan(plan: CopyPlan): Promise<string> {
  const hash = createHash('sha256')
  hash.update(`${JSON.stringify({destIsDir: plan.destIsDir})}\n`)
  // One JSON line per entry: no file name (which may hold a newline) can forge another entry.
  for (const entry of plan.entries) {
    const link = entry.kind === 'symlink' ? await fs.readlink(entry.source) : null
    const content = entry.kind === 'file' ? await hashFile(entry.source) : null
    hash.update(`${JSON.stringify([entry.kind, entry.rel, entry.name, entry.mode, link, content])}\n`)
  }

  return hash.digest('hex')
}

/**
 * Files up to this size are hashed with synchronous reads: a COPY's sources are mostly small, and
 * setting up a stream for each cost more than reading it (a fifth of an unchanged rebuild's CPU).
 * A bigger file streams, so that progress keeps moving while it is read.
 */
const SMALL_FILE = 1024 * 1024
const smallBuffer = Buffer.allocUnsafe(SMALL_FILE)

/** The sha256 of regular file `file`'s content (never read through a symlink put in its place). */
async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256')
  const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW)
  let streamed = false
  try {
    if (fstatSync(fd).size > SMALL_FILE) {
      streamed = true // the stream closes fd, however it ends
      for await (const chunk of createReadStream('', {fd})) hash.update(chunk as Buffer)
    } else {
      for (let n; (n = readSync(fd, smallBuffer, 0, SMALL_FILE, null)) > 0;) hash.update(smallBuffer.subarray(0, n))
    }
  } finally {
    if (!streamed) closeSync(fd)
  }

  return hash.digest('hex')
}
