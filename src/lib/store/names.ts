import {WafersError, quote} from '../errors.js'

/** The longest wafer name, as for machine names under /var/lib/machines. */
export const MAX_NAME_LENGTH = 64

const NAME_RULE = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/

/** The rule, in the words every refusal uses. */
export const NAME_RULE_TEXT =
  'ASCII letters, digits, "-", "_" and "." only, not starting with "." or "-", at most 64 characters'

/** Whether `name` is a valid wafer name (and so a safe single path component). */
export function isValidName(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME_LENGTH && NAME_RULE.test(name)
}

/** Returns `name` when it is valid; otherwise throws one sentence naming the rule. */
export function checkName(name: string, what = 'wafer name'): string {
  if (!isValidName(name)) {
    throw new WafersError(`${what} ${quote(name)} is not valid: use ${NAME_RULE_TEXT}.`)
  }

  return name
}
