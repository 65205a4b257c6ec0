import {expect} from 'chai'
import {readFileSync, readdirSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

// The folders of src/lib, lowest first: a module may import from its own folder or a lower one,
// never a higher one, so the layer format never learns about stores and no store about builds.
const ORDER = ['', 'ui', 'host', 'layer', 'store', 'mount', 'seed', 'ops', 'oci', 'builder']
const LIB = fileURLToPath(new URL('../../src/lib/', import.meta.url))

function modules(dir: string): string[] {
  return readdirSync(dir, {withFileTypes: true}).flatMap((entry) => {
    const file = path.join(dir, entry.name)
    if (entry.isDirectory()) return modules(file)
    return entry.name.endsWith('.ts') ? [file] : []
  })
}

/** The folder of src/lib a module is in: '' for the files at its root. */
function folderOf(file: string): string {
  const rel = path.relative(LIB, file)
  return rel.includes(path.sep) ? rel.split(path.sep)[0] : ''
}

/** Every relative import (static or dynamic) of a module, as the file it names. */
function importsOf(file: string): string[] {
  const source = readFileSync(file, 'utf8')
  const found = []
  for (const match of source.matchAll(/(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
    found.push(path.resolve(path.dirname(file), match[1]).replace(/\.js$/, '.ts'))
  }

  return found
}

describe('src/lib layout', () => {
  const files = modules(LIB)

  it('knows every folder of src/lib', () => {
    const folders = new Set(files.map((file) => folderOf(file)))
    expect([...folders].filter((folder) => !ORDER.includes(folder))).to.deep.equal([])
  })

  it('has no import from a lower folder to a higher one, and nothing in src/lib imports a command or oclif', () => {
    const upward: string[] = []
    for (const file of files) {
      const from = ORDER.indexOf(folderOf(file))
      for (const target of importsOf(file)) {
        const rel = path.relative(LIB, target)
        if (rel.startsWith('..')) {
          upward.push(`${path.relative(LIB, file)} -> ${rel}`)
          continue
        }

        if (ORDER.indexOf(folderOf(target)) > from) upward.push(`${path.relative(LIB, file)} -> ${rel}`)
      }

      if (/from ['"]@oclif\//.test(readFileSync(file, 'utf8'))) upward.push(`${path.relative(LIB, file)} -> @oclif`)
    }

    expect(upward).to.deep.equal([])
  })

  it('has no import cycle between folders', () => {
    const edges = new Map<string, Set<string>>()
    for (const file of files) {
      const from = folderOf(file)
      for (const target of importsOf(file)) {
        const to = folderOf(target)
        if (to === from || path.relative(LIB, target).startsWith('..')) continue
        if (!edges.has(from)) edges.set(from, new Set())
        edges.get(from)!.add(to)
      }
    }

    const cycles: string[] = []
    const reaches = (start: string, goal: string, seen = new Set<string>()): boolean => {
      for (const next of edges.get(start) ?? []) {
        if (next === goal) return true
        if (seen.has(next)) continue
        seen.add(next)
        if (reaches(next, goal, seen)) return true
      }

      return false
    }

    for (const folder of edges.keys()) if (reaches(folder, folder)) cycles.push(folder)
    expect(cycles).to.deep.equal([])
  })
})
