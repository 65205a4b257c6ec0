import {Args} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {WafersError} from '../lib/errors.js'
import {checkName} from '../lib/names.js'
import {UnstackResult, unstack} from '../lib/stack.js'
import {locationsFromEnv} from '../lib/store.js'

export default class Unstack extends WafersCommand {
  static args = {
    name: Args.string({description: 'A stack to take down, by wafer name; give as many as you like.', required: true}),
  }

  static description = `Unmounts each stack at $STACKS/NAME and removes its empty mount point. The wafers' data is never deleted: stack them again at any time. A name with nothing stacked is reported and skipped.`

  static enableJsonFlag = true

  static examples = [
    {command: '<%= config.bin %> <%= command.id %> archbase2', description: 'Take one stack down:'},
    {command: '<%= config.bin %> <%= command.id %> web db cache', description: 'Take several down:'},
  ]

  static strict = false

  static summary = 'Unmount stacks; their wafers stay.'

  async run(): Promise<UnstackResult[]> {
    const {argv} = await this.parse(Unstack)
    const names = argv as string[]
    for (const name of names) checkName(name)
    const locations = locationsFromEnv()
    const hooks = this.hookRunner()
    const results: UnstackResult[] = []
    const failures: string[] = []
    for (const name of names) {
      try {
        // eslint-disable-next-line no-await-in-loop
        const result = await unstack(locations, name, hooks)
        results.push(result)
        this.log(result.unstacked ? `unstacked ${result.mountpoint}` : `nothing stacked at ${result.mountpoint}`)
      } catch (error) {
        if (names.length === 1) throw error
        failures.push(`${name}: ${(error as Error).message}`)
        this.logToStderr(`cannot unstack ${name}: ${(error as Error).message}`)
      }
    }

    if (failures.length > 0) {
      throw new WafersError(`${failures.length} of ${names.length} stacks could not be unstacked (${failures.join('; ')})`)
    }

    return results
  }
}
