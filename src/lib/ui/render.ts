/** Plain-text rendering shared by commands: tables, tree drawings and sizes. */

/** Lines of a table with a header, columns padded to their widest cell, the last one not padded. */
export function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i].length)))
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i])))
      .join('  ')
      .trimEnd()
  return [line(header), ...rows.map((row) => line(row))]
}

/** A generated wafer name: an image layer's (`layer-` and 32 hex digits) or a build step's (`build-` and 40). */
const GENERATED = /^(layer|build)-([\da-f]{16,})$/

/**
 * Short forms of the generated names among `names`, as git abbreviates commit ids: the kind, the
 * fewest hex digits (at least `minimum`) that no other generated name of that kind starts with,
 * and "…" to show that it is cut. Other names are left out.
 */
export function abbreviations(names: Iterable<string>, minimum = 8): Map<string, string> {
  const byKind = new Map<string, string[]>()
  for (const name of new Set(names)) {
    const match = GENERATED.exec(name)
    if (match === null) continue
    byKind.set(match[1], [...(byKind.get(match[1]) ?? []), match[2]])
  }

  const common = (a = '', b = '') => {
    let i = 0
    while (i < a.length && a[i] === b[i]) i++
    return i
  }

  const short = new Map<string, string>()
  for (const [kind, ids] of byKind) {
    ids.sort()
    for (const [i, id] of ids.entries()) {
      const length = Math.max(minimum, common(id, ids[i - 1]) + 1, common(id, ids[i + 1]) + 1)
      if (length < id.length) short.set(`${kind}-${id}`, `${kind}-${id.slice(0, length)}…`)
    }
  }

  return short
}

/**
 * The lines of `table(header, rows)` made to fit `width` columns when they would not: generated
 * names in the columns `names` are abbreviated (see abbreviations), then the last column is cut
 * with "…". Without a width (not a terminal) the table is whole.
 */
export function fitTable(header: string[], rows: string[][], options: {names: number[]; width?: number}): string[] {
  const width = options.width
  const lines = table(header, rows)
  if (width === undefined || width <= 0 || lines.every((line) => line.length <= width)) return lines
  const short = abbreviations(rows.flatMap((row) => options.names.map((i) => row[i])))
  const abbreviated = rows.map((row) =>
    row.map((cell, i) => (options.names.includes(i) ? (short.get(cell) ?? cell) : cell)),
  )
  const fitted = table(header, abbreviated)
  const last = header.length - 1
  // Where the last column starts: the header's padded cells before it.
  const start = fitted[0].length - header[last].length
  const room = Math.max(width - start, 10)
  return fitted.map((line) => (line.length > start + room ? `${line.slice(0, start + room - 1)}…` : line))
}

/** A node of a tree drawing: its label and its children. */
export interface DrawNode {
  children: DrawNode[]
  label: string
}

/** Draws `roots` as `tree` does, with ├── └── │ branches; iterative, so deep chains draw too. */
export function drawTree(roots: DrawNode[]): string[] {
  const lines: string[] = []
  const stack: Array<{last: boolean; node: DrawNode; prefix: string; root: boolean}> = roots
    .map((node) => ({last: true, node, prefix: '', root: true}))
    .reverse()
  while (stack.length > 0) {
    const {last, node, prefix, root} = stack.pop()!
    lines.push(root ? node.label : `${prefix}${last ? '└── ' : '├── '}${node.label}`)
    const childPrefix = root ? '' : `${prefix}${last ? '    ' : '│   '}`
    for (let i = node.children.length - 1; i >= 0; i--) {
      stack.push({last: i === node.children.length - 1, node: node.children[i], prefix: childPrefix, root: false})
    }
  }

  return lines
}

/** A size in bytes as `du -h` would print it: 0, 512, 4.0K, 1.5M, 12G. */
export function humanSize(bytes: number): string {
  const units = ['K', 'M', 'G', 'T', 'P']
  if (bytes < 1024) return String(bytes)
  let value = bytes
  let unit = ''
  for (const next of units) {
    if (value < 1024) break
    value /= 1024
    unit = next
  }

  return value < 10 ? `${value.toFixed(1)}${unit}` : `${Math.round(value)}${unit}`
}

/** `1 wafer`, `2 wafers`: a count with its noun, plural when it is not one. */
export function plural(count: number, one: string, many = `${one}s`): string {
  return `${count} ${count === 1 ? one : many}`
}
