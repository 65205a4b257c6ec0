import {Args} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {systemdDirsFromEnv} from '../lib/ops/enable.js'
import {MoveResult, moveSummary, moveWafer} from '../lib/ops/move.js'
import {locationsFromEnv} from '../lib/store/store.js'

export default class Mv extends WafersCommand {
  static args = {
    old: Args.string({description: 'The wafer to rename.', required: true}),
    new: Args.string({description: 'Its new name; must not exist yet.', required: true}),
  }
  static description = `Renames wafer OLD to NEW and points every wafer built on it at NEW (each parent file replaced atomically). It refuses, changing nothing, while OLD, a wafer below it or a wafer built on it is stacked or a lower layer of a stack (in any mount namespace), while a create or build is making a wafer on OLD, or while wafers enable stacks OLD at boot (disable it first).

A rename interrupted midway (a crash, kill -9) leaves OLD renamed and some children still naming OLD: run the same wafers mv OLD NEW again to finish it.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> web web-2024',
      description: 'Rename web, re-pointing what is built on it:',
    },
    {command: '<%= config.bin %> <%= command.id %> web web-2024 --json', description: 'Print {children, from, to}:'},
  ]
  static summary = 'Rename a wafer, re-pointing the wafers built on it.'

  async run(): Promise<MoveResult> {
    const {args} = await this.parse(Mv)
    const result = await moveWafer(locationsFromEnv(), args.old, args.new, {units: systemdDirsFromEnv().units})
    this.log(moveSummary(result))
    return result
  }
}
