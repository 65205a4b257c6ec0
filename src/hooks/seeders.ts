import type {Hook} from '@oclif/core'

import {BUILTIN_SEEDERS} from '../lib/seed/seeders/index.js'

/** wafers is its own first plugin: the built-in seeders come through the same hook as any other. */
const hook: Hook<'wafers:seeders'> = async function () {
  return BUILTIN_SEEDERS
}

export default hook
