import {expect} from 'chai'
import {execFileSync} from 'node:child_process'
import {lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {loadXattr} from '../../../src/lib/host/xattr.js'
import {isOpaqueDir, lookup} from '../../../src/lib/layer/lookup.js'
import {isWhiteout} from '../../../src/lib/layer/whiteouts.js'
import {requireMounts} from '../../helpers/sandbox.js'

/** What a layer holds, by relative path: d (dir), f (file), w (whiteout), l:TARGET, or o:FORM (opaque dir). */
type Layer = Record<string, string>

function makeLayer(dir: string, entries: Layer): void {
  mkdirSync(dir, {recursive: true})
  for (const [rel, what] of Object.entries(entries)) {
    const file = path.join(dir, rel)
    mkdirSync(path.dirname(file), {recursive: true})
    if (what === 'd') mkdirSync(file, {recursive: true})
    else if (what === 'f') writeFileSync(file, rel)
    else if (what === 'w') execFileSync('mknod', [file, 'c', '0', '0'])
    else if (what.startsWith('l:')) symlinkSync(what.slice(2), file)
    else if (what.startsWith('o:')) {
      mkdirSync(file, {recursive: true})
      execFileSync('setfattr', ['-n', `${what.slice(2)}.overlay.opaque`, '-v', 'y', file])
    } else throw new Error(`unknown entry ${what}`)
  }
}

/** What the kernel's overlay of `lowers` shows at `rel`, in lookup's terms. */
function kernelKind(mounted: string, rel: string): 'dir' | 'none' | 'other' {
  try {
    return lstatSync(path.join(mounted, rel)).isDirectory() ? 'dir' : 'other'
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return 'none'
    if (code === 'ENOTDIR') return 'other'
    throw error
  }
}

/** The names merged directories show, as overlayfs lists them: the nearest wins, a whiteout hides. */
function mergedNames(dirs: string[]): string[] {
  const seen = new Map<string, boolean>()
  for (const dir of dirs) {
    for (const name of readdirSync(dir)) {
      if (!seen.has(name)) seen.set(name, !isWhiteout(lstatSync(path.join(dir, name))))
    }
  }

  return [...seen]
    .filter(([, shown]) => shown)
    .map(([name]) => name)
    .sort()
}

// Nearest first. Covers a dir merged over two layers, a file over a dir and a dir over a file, a
// whiteout over a dir and over a file, an opaque dir hiding a deeper one's entries, paths under a
// file, under a whiteout and under nothing, and a link to a directory (never followed).
const LAYERS: Layer[] = [
  {'a/top': 'f', b: 'w', 'c/d': 'd', e: 'f', 'o/x': 'f', o: 'o:FORM', 'w/x': 'w'},
  {'a/mid': 'f', 'a/top': 'd', c: 'f', 'e/f': 'd', link: 'l:a', 'o/y': 'f', 'w/x/deep': 'f', 'w/y': 'f'},
  {'a/low/deep': 'f', 'b/z': 'f', 'c/d/e': 'f', 'o/y/z': 'f', 'o/z': 'f', 'w/x': 'f'},
]

describe('lookup through a chain of layers', function () {
  let root: string

  before(async function () {
    requireMounts(this)
    await loadXattr()
  })

  beforeEach(function () {
    root = mkdtempSync(path.join(os.tmpdir(), 'wafers-lookup-'))
  })

  afterEach(function () {
    try {
      execFileSync('umount', [path.join(root, 'merged')], {stdio: 'ignore'})
    } catch {}

    rmSync(root, {force: true, recursive: true})
  })

  function layers(form: string): string[] {
    return LAYERS.map((entries, index) => {
      const dir = path.join(root, `l${index}`)
      makeLayer(
        dir,
        Object.fromEntries(Object.entries(entries).map(([rel, what]) => [rel, what.replace('FORM', form)])),
      )
      return dir
    })
  }

  for (const form of ['trusted', 'user']) {
    it(`agrees with the kernel's overlay (${form} form opaque marks) on every path, links aside`, function () {
      const lowers = layers(form)
      const mounted = path.join(root, 'merged')
      mkdirSync(mounted)
      const options = [`lowerdir=${lowers.join(':')}`, ...(form === 'user' ? ['userxattr'] : [])]
      execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', options.join(','), mounted])
      const paths = new Set<string>()
      for (const entries of LAYERS) {
        for (const rel of Object.keys(entries)) {
          for (let at = rel; at !== '.'; at = path.posix.dirname(at)) paths.add(at)
          paths.add(`${rel}/under`)
        }
      }

      paths.add('nothing/under/it')
      let compared = 0
      for (const rel of [...paths].sort()) {
        // The kernel follows a link in the middle of a path; lookup never does (it answers 'other').
        if (rel.startsWith('link/')) continue
        const below = lookup(lowers, rel)
        expect(below.kind, rel).to.equal(kernelKind(mounted, rel))
        if (below.kind === 'dir')
          expect(mergedNames(below.dirs), rel).to.deep.equal(readdirSync(path.join(mounted, rel)).sort())
        compared++
      }

      expect(compared).to.be.greaterThan(30)
    })
  }

  it('answers with the directories that make a merged one, nearest first, and stops at an opaque one', function () {
    const lowers = layers('user')
    expect(lookup(lowers, 'a')).to.deep.equal({dirs: lowers.map((dir) => path.join(dir, 'a')), kind: 'dir'})
    expect(lookup(lowers, 'o')).to.deep.equal({dirs: [path.join(lowers[0], 'o')], kind: 'dir'})
    expect(lookup(lowers, 'c/d')).to.deep.equal({dirs: [path.join(lowers[0], 'c/d')], kind: 'dir'})
    expect(lookup(lowers, '')).to.deep.equal({dirs: lowers, kind: 'dir'})
    // One level at a time, as diff walks: the dirs of one lookup are the lowers of the next.
    const a = lookup(lowers, 'a')
    expect(a.kind === 'dir' && lookup(a.dirs, 'top')).to.deep.equal({kind: 'other'})
    expect(a.kind === 'dir' && lookup(a.dirs, 'low/deep')).to.deep.equal({kind: 'other'})
  })

  it('never follows a link: a path under one is "other", the link itself too', function () {
    const lowers = layers('trusted')
    expect(lookup(lowers, 'link')).to.deep.equal({kind: 'other'})
    expect(lookup(lowers, 'link/mid')).to.deep.equal({kind: 'other'})
    expect(lookup(lowers, 'link/nothing')).to.deep.equal({kind: 'other'})
  })

  it('reads an opaque mark in either form, and only the value y', function () {
    const dir = path.join(root, 'marks')
    makeLayer(dir, {plain: 'd', trusted: 'o:trusted', user: 'o:user', x: 'd'})
    execFileSync('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'x', path.join(dir, 'x')])
    execFileSync('setfattr', ['-n', 'user.overlay.overlay.opaque', '-v', 'y', path.join(dir, 'plain')])
    expect(['plain', 'trusted', 'user', 'x'].map((name) => isOpaqueDir(path.join(dir, name)))).to.deep.equal([
      false,
      true,
      true,
      false,
    ])
  })
})
