import {WafersError, quote} from '../errors.js'

/** One instruction of a Containerfile, as written (continuations joined, comments dropped). */
export interface Instruction {
  /** The arguments after the keyword, continuations joined, untouched otherwise. */
  args: string
  /** The instruction's keyword, upper case (RUN, COPY, ...). */
  keyword: string
  /** The 1-based line it starts on. */
  line: number
  /** The whole instruction as one line, for titles, history and cache keys (here-documents too). */
  text: string
  /** BuildKit's here-documents (`<<EOF` ... `EOF`) of a RUN, COPY or ADD, in order. */
  heredocs?: Heredoc[]
}

/** One here-document: its name (the delimiter), its body, and whether variables expand in it. */
export interface Heredoc {
  body: string
  /** False when the delimiter was quoted (`<<"EOF"`, `<<'EOF'`), as in a shell. */
  expand: boolean
  name: string
}

/** `<<EOF`, `<<-EOF`, `<<"EOF"`, `<<'EOF'` in a RUN, COPY or ADD line. */
const HEREDOC = /(?:^|\s)<<(-?)(["']?)([A-Za-z_][A-Za-z0-9_]*)\2/g

/** A parsed Containerfile: its directives and instructions in order. */
export interface Containerfile {
  /** The escape character (`# escape=` directive; backslash by default). */
  escape: string
  instructions: Instruction[]
  /** The `# syntax=` directive, kept but not acted on. */
  syntax?: string
}

const KEYWORDS = new Set([
  'ADD',
  'ARG',
  'CMD',
  'COPY',
  'ENTRYPOINT',
  'ENV',
  'EXPOSE',
  'FROM',
  'HEALTHCHECK',
  'LABEL',
  'MAINTAINER',
  'ONBUILD',
  'RUN',
  'SHELL',
  'STOPSIGNAL',
  'USER',
  'VOLUME',
  'WORKDIR',
])

/**
 * Parses Containerfile text as Docker does: parser directives at the top (`# escape=`,
 * `# syntax=`), comment lines dropped (inside continuations too), lines ending in the escape
 * character joined with the next. Refuses unknown instructions, naming the line.
 */
export function parseContainerfile(text: string): Containerfile {
  const lines = text.replaceAll('\r\n', '\n').split('\n')
  let escape = '\\'
  let syntax: string | undefined
  let index = 0
  const seen = new Set<string>()
  // Directives: only before any blank line, comment or instruction, each at most once.
  for (; index < lines.length; index++) {
    const match = /^\s*#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.*?)\s*$/.exec(lines[index])
    if (!match) break
    const key = match[1].toLowerCase()
    if (key !== 'escape' && key !== 'syntax') break
    if (seen.has(key)) throw new WafersError(`line ${index + 1}: the ${key} directive is given twice.`)
    seen.add(key)
    if (key === 'escape') {
      if (match[2] !== '\\' && match[2] !== '`') {
        throw new WafersError(`line ${index + 1}: the escape directive takes \\ or \`, not ${quote(match[2])}.`)
      }

      escape = match[2]
    } else syntax = match[2]
  }

  const continuation = new RegExp(`${escape === '\\' ? '\\\\' : '`'}[ \\t]*$`)
  const instructions: Instruction[] = []
  let pending: string | undefined
  let start = 0
  for (; index < lines.length; index++) {
    const line = lines[index]
    const trimmed = line.trim()
    if (/^#/.test(trimmed)) continue
    if (pending === undefined) {
      if (trimmed === '') continue
      start = index + 1
      pending = ''
    } else if (trimmed === '') continue

    if (continuation.test(line)) {
      pending += line.replace(continuation, '')
      continue
    }

    pending += line
    const instruction = toInstruction(pending, start)
    pending = undefined
    if (['ADD', 'COPY', 'RUN'].includes(instruction.keyword)) {
      // Each here-document's body is the lines after the instruction up to its delimiter alone.
      const bodies: Heredoc[] = []
      const raw: string[] = []
      for (const [, strip, quote, name] of instruction.args.matchAll(HEREDOC)) {
        const body: string[] = []
        for (index++; ; index++) {
          if (index >= lines.length)
            throw new WafersError(`line ${start}: the here-document ${name} has no line ${name} to end it.`)
          raw.push(lines[index])
          const text = strip ? lines[index].replace(/^\t+/, '') : lines[index]
          if (text === name) break
          body.push(text)
        }

        bodies.push({body: body.length === 0 ? '' : `${body.join('\n')}\n`, expand: quote === '', name})
      }

      if (bodies.length > 0) {
        instruction.heredocs = bodies
        instruction.text = [instruction.text, ...raw].join('\n')
      }
    }

    instructions.push(instruction)
  }

  if (pending !== undefined && pending.trim() !== '') instructions.push(toInstruction(pending, start))
  if (instructions.length === 0) throw new WafersError('the Containerfile has no instructions.')
  if (instructions[0].keyword !== 'FROM' && instructions.some((i) => i.keyword === 'FROM')) {
    const first = instructions.find((i) => i.keyword !== 'ARG')
    if (first?.keyword !== 'FROM') {
      throw new WafersError(`line ${first?.line}: only ARG may come before the first FROM, not ${first?.keyword}.`)
    }
  } else if (instructions[0].keyword !== 'FROM') {
    throw new WafersError('the Containerfile has no FROM instruction; start it with FROM NAME or FROM scratch.')
  }

  return {escape, instructions, syntax}
}

function toInstruction(joined: string, line: number): Instruction {
  const text = joined.trim()
  const match = /^(\S+)\s*([\s\S]*)$/.exec(text)
  const word = match?.[1] ?? ''
  const keyword = word.toUpperCase()
  if (!KEYWORDS.has(keyword)) throw new WafersError(`line ${line}: unknown instruction ${word}.`)
  return {args: (match?.[2] ?? '').trim(), keyword, line, text: `${keyword} ${(match?.[2] ?? '').trim()}`.trim()}
}

/**
 * The JSON (exec) form of `args` when it is a JSON array of strings, else undefined (shell form),
 * as Docker decides it.
 */
export function execForm(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined
  try {
    const value: unknown = JSON.parse(args)
    if (Array.isArray(value) && value.every((item) => typeof item === 'string')) return value as string[]
  } catch {
    // Not JSON: shell form, as Docker treats it.
  }

  return undefined
}

/** Variables visible to substitution: ARGs and ENVs in scope. */
export type Variables = Map<string, string>

/**
 * Splits `text` into words as Docker's shell lexer does, substituting `$VAR`, `${VAR}`,
 * `${VAR:-default}`, `${VAR:+alternative}` (and `-`/`+` without the colon) outside single quotes.
 * Quotes are removed; the escape character escapes the next character (inside double quotes only
 * `"`, `$` and itself). With `split` false the text is one word, its unquoted blanks kept.
 */
export function words(text: string, vars: Variables, escape = '\\', substitute = true, split = true): string[] {
  const result: string[] = []
  let word = ''
  let inWord = false
  // An unquoted expansion to nothing makes no word, as in a shell; "" does.
  let quoted = false
  let i = 0
  const expand = (): string => {
    // text[i] is '$'
    const next = text[i + 1]
    if (next === '{') {
      const close = findClose(text, i + 2)
      const inner = text.slice(i + 2, close)
      i = close + 1
      const match = /^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([\s\S]*))?$/.exec(inner)
      if (!match) throw new WafersError(`bad substitution: \${${inner}}.`)
      const [, name, op, rest] = match
      const value = vars.get(name)
      const set = op?.startsWith(':') ? value !== undefined && value !== '' : value !== undefined
      if (op === undefined) return value ?? ''
      const other = words(rest ?? '', vars, escape, true).join(' ')
      if (op.endsWith('-')) return set ? (value ?? '') : other
      return set ? other : ''
    }

    const match = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(i + 1))
    if (!match) {
      i++
      return '$'
    }

    i += 1 + match[0].length
    return vars.get(match[0]) ?? ''
  }

  while (i < text.length) {
    const c = text[i]
    if (split && /\s/.test(c)) {
      if (inWord && (word !== '' || quoted)) result.push(word)
      word = ''
      inWord = false
      quoted = false
      i++
      continue
    }

    inWord = true
    if (c === escape) {
      if (i + 1 < text.length) word += text[i + 1]
      i += 2
    } else if (c === "'") {
      quoted = true
      const close = text.indexOf("'", i + 1)
      if (close === -1) throw new WafersError(`unmatched ' in ${text}.`)
      word += text.slice(i + 1, close)
      i = close + 1
    } else if (c === '"') {
      quoted = true
      i++
      while (i < text.length && text[i] !== '"') {
        if (text[i] === escape && i + 1 < text.length && ['"', '$', escape].includes(text[i + 1])) {
          word += text[i + 1]
          i += 2
        } else if (text[i] === '$' && substitute) word += expand()
        else word += text[i++]
      }

      if (i >= text.length) throw new WafersError(`unmatched " in ${text}.`)
      i++
    } else if (c === '$' && substitute) {
      word += expand()
    } else {
      word += c
      i++
    }
  }

  if (inWord && (word !== '' || quoted)) result.push(word)
  return result
}

/** Substitutes variables in each element of an exec form (no word splitting), as Docker does for COPY/ADD. */
export function substituteEach(items: string[], vars: Variables, escape = '\\'): string[] {
  return items.map((item) =>
    words(`"${item.replaceAll(escape, escape + escape).replaceAll('"', `${escape}"`)}"`, vars, escape).join(''),
  )
}

function findClose(text: string, from: number): number {
  let depth = 1
  for (let i = from; i < text.length; i++) {
    if (text[i] === '{') depth++
    else if (text[i] === '}' && --depth === 0) return i
  }

  throw new WafersError(`unmatched \${ in ${text}.`)
}

/**
 * `KEY=VALUE` pairs (ENV, LABEL, ARG), or ENV's legacy `KEY VALUE` form. Values are substituted
 * and unquoted.
 */
export function keyValues(args: string, vars: Variables, escape = '\\', legacy = false): Array<[string, string]> {
  const first = /^(\S+)(\s+)([\s\S]*)$/.exec(args)
  if (legacy && first && !first[1].includes('=')) {
    // As Docker does: the rest of the line is one word, its unquoted blanks kept.
    return [[first[1], words(first[3], vars, escape, true, false).join('')]]
  }

  return words(args, vars, escape).map((word) => {
    const eq = word.indexOf('=')
    if (eq <= 0) throw new WafersError(`expected KEY=VALUE, got ${quote(word)}.`)
    return [word.slice(0, eq), word.slice(eq + 1)]
  })
}

/** Leading `--name=value` flags of COPY/ADD/FROM/RUN, and the rest. Refuses flags not in `allowed`. */
export function splitFlags(
  args: string,
  allowed: string[],
  keyword: string,
): {flags: Record<string, string>; rest: string} {
  const flags: Record<string, string> = {}
  let rest = args
  for (;;) {
    const match = /^--([a-z-]+)(?:=(\S*))?(?:\s+|$)/.exec(rest)
    if (!match) break
    if (!allowed.includes(match[1])) {
      throw new WafersError(
        `${keyword} --${match[1]} is not supported; wafers takes ${allowed.map((f) => `--${f}`).join(', ') || 'no flags'} there.`,
      )
    }

    flags[match[1]] = match[2] ?? 'true'
    rest = rest.slice(match[0].length)
  }

  return {flags, rest}
}
