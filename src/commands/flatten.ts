import {Args} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {FlattenResult, flattenWafer} from '../lib/ops/flatten.js'
import {locationsFromEnv} from '../lib/store/store.js'
import {plural} from '../lib/ui/render.js'

export default class Flatten extends WafersCommand {
  static args = {
    name: Args.string({description: 'The wafer whose stack to flatten.', required: true}),
    new: Args.string({description: 'The base wafer to make; must not exist yet.', required: true}),
  }
  static description = `Makes NEW a base wafer (no parent) holding what a container on NAME's stack sees: the layers merged, with owners, modes, timestamps, extended attributes and file capabilities, hard links and devices kept, and no whiteouts or overlay attributes left. The nearest image config of the stack comes along, so NEW stacks, runs and pushes as NAME does, with one layer. NAME and its stack are left as they are.

The stack is mounted read-only in a private directory of the store while it is copied. It refuses a NEW that exists, and a stack one of whose wafers is stacked as a writable top right now (its files could change meanwhile): unstack it first.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> web web-flat',
      description: 'Squash web and everything below it into one base wafer:',
    },
    {command: '<%= config.bin %> <%= command.id %> web web-flat --json', description: 'Print {name, source, wafers}:'},
  ]
  static summary = "Make a base wafer from a wafer's merged stack."

  async run(): Promise<FlattenResult> {
    const {args} = await this.parse(Flatten)
    const result = await flattenWafer(locationsFromEnv(), args.name, args.new)
    this.log(`flattened ${result.source} (${plural(result.wafers.length, 'wafer')}) into base wafer ${result.name}`)
    return result
  }
}
