/**
 * An error a user caused or can fix: one sentence, plus optional hints.
 * Commands print it without a stack trace; anything else is a bug.
 */
export class WafersError extends Error {
  readonly suggestions: string[]
  readonly exit: number

  constructor(message: string, options: {exit?: number; suggestions?: string[]} = {}) {
    super(cutLongWords(message))
    this.name = 'WafersError'
    this.exit = options.exit ?? 1
    this.suggestions = (options.suggestions ?? []).map((line) => cutLongWords(line))
  }
}

/**
 * `text` with every word (a run without spaces) far longer than SHOWN_LENGTH cut as shown() cuts
 * it: in a sentence, such a word is a name or a path from the user or a store, which no one reads
 * whole. The margin lets a quote()d name (200 characters, quotes and `…`) through untouched.
 */
function cutLongWords(text: string): string {
  return text.replaceAll(new RegExp(`\\S{${SHOWN_LENGTH + 12},}`, 'gu'), (word) => shown(word))
}

/** How many characters of a name or path a message shows. */
export const SHOWN_LENGTH = 200

/** `text` for a message: cut to its first 200 characters (with `…`) when longer. */
export function shown(text: string): string {
  const chars = [...text]
  return chars.length > SHOWN_LENGTH ? `${chars.slice(0, SHOWN_LENGTH).join('')}…` : text
}

/** `text` for a message, quoted as JSON and cut to its first 200 characters (with `…`) when longer. */
export function quote(text: string): string {
  const chars = [...text]
  return chars.length > SHOWN_LENGTH
    ? `${JSON.stringify(chars.slice(0, SHOWN_LENGTH).join(''))}…`
    : JSON.stringify(text)
}

/** True when a Node system error carries the given code (ENOENT, EEXIST, ...). */
export function isErrno(error: unknown, code: string): boolean {
  return typeof error === 'object' && error !== null && (error as NodeJS.ErrnoException).code === code
}

/** What the kernel's error codes mean, in the words of one sentence ("PATH ..."). */
const SYSTEM_ERRORS: Record<string, string> = {
  EACCES: 'cannot be used: permission denied',
  EDQUOT: 'cannot be written: the disk quota is used up',
  EEXIST: 'already exists',
  EIO: 'cannot be read or written: input/output error',
  EISDIR: 'is a directory',
  ELOOP: 'goes through too many symbolic links',
  ENAMETOOLONG: 'has a name that is too long',
  ENOENT: 'does not exist',
  ENOSPC: 'cannot be written: no space is left on its file system',
  ENOTDIR: 'is not a directory, or has a file where a directory should be',
  ENOTEMPTY: 'is not empty',
  EPERM: 'cannot be changed: operation not permitted',
  EROFS: 'cannot be written: it is on a read-only file system',
}

/**
 * One sentence for a Node system error (ENOTDIR, EROFS, ENOSPC, ...) saying what went wrong where,
 * instead of its raw text; undefined for any other error.
 */
export function describeSystemError(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined
  const {code, dest, path: file, syscall} = error as NodeJS.ErrnoException & {dest?: string}
  if (typeof code !== 'string' || !/^E[A-Z]+$/.test(code)) return undefined
  if (code === 'ENOENT' && syscall === 'mkdir' && file !== undefined) {
    return `${shown(file)} cannot be made: the directory it would be in does not exist.`
  }

  const what = SYSTEM_ERRORS[code] ?? `failed (${code})`
  if (file === undefined) return `a file operation ${what.replace(/^cannot be \w+: /, 'failed: ')}.`
  const where = dest === undefined ? shown(file) : `${shown(file)} (to ${shown(dest)})`
  return `${where} ${what}.`
}

/** `error` as a WafersError: system errors become one sentence (see describeSystemError). */
export function asWafersError(error: unknown): unknown {
  if (error instanceof WafersError) return error
  const sentence = describeSystemError(error)
  return sentence === undefined ? error : new WafersError(sentence)
}
