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
