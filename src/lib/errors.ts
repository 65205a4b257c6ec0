/**
 * An error a user caused or can fix: one sentence, plus optional hints.
 * Commands print it without a stack trace; anything else is a bug.
 */
export class WafersError extends Error {
  readonly suggestions: string[]
  readonly exit: number

  constructor(message: string, options: {exit?: number; suggestions?: string[]} = {}) {
    super(message)
    this.name = 'WafersError'
    this.exit = options.exit ?? 1
    this.suggestions = options.suggestions ?? []
  }
}

/** True when a Node system error carries the given code (ENOENT, EEXIST, ...). */
export function isErrno(error: unknown, code: string): boolean {
  return typeof error === 'object' && error !== null && (error as NodeJS.ErrnoException).code === code
}
