import {Args, Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {progressMode, runSteps} from '../lib/progress.js'
import {splitSeederArgs} from '../lib/seed.js'
import {StackResult, stackSteps} from '../lib/stack.js'
import {locationsFromEnv} from '../lib/store.js'

export default class Stack extends WafersCommand {
  static args = {
    name: Args.string({description: 'The top wafer of the stack; it is mounted at $STACKS/NAME.', required: true}),
    parent: Args.string({description: 'The wafer to create NAME on, when NAME does not exist yet.'}),
  }

  static description = `Traces the ancestry of wafer NAME through its parent files and mounts the whole stack with overlayfs at $STACKS/NAME (/var/lib/machines/NAME by default, where systemd-nspawn and machinectl find it). NAME's data is the writable upper layer; every ancestor's data is a read-only lower layer, nearest first. A wafer with no parent is bind-mounted on its own, so writes go straight into its data.

If NAME does not exist and PARENT is given, NAME is created first ($WAFERS/NAME/data, work and a parent file naming PARENT), with its own fresh etc/machine-id when the layers below have one. Stacking something already stacked does nothing and says so.

The last line on stdout is always "N wafers stacked at MOUNTPOINT"; progress goes to stderr. WAFERS and STACKS override /var/lib/wafers and /var/lib/machines.`

  static enableJsonFlag = true

  static examples = [
    {command: '<%= config.bin %> <%= command.id %> archbase2 archbase', description: 'Create wafer archbase2 on archbase and stack it:'},
    {command: '<%= config.bin %> <%= command.id %> archbase2', description: 'Stack it again later (the parent is remembered):'},
    {command: '<%= config.bin %> <%= command.id %> archbase', description: 'Stack a base wafer on its own:'},
    {command: 'WAFERS=/srv/wafers STACKS=/srv/stacks <%= config.bin %> <%= command.id %> web --json', description: 'Use other directories and print the result as JSON:'},
    {command: '<%= config.bin %> <%= command.id %> tiny --seed busybox', description: 'Create base wafer tiny from the host\'s busybox and stack it:'},
  ]

  static flags = {
    seed: Flags.string({description: 'Fill NAME, a new base wafer, with this seeder first (see `wafers seeders`); its arguments follow `--`.'}),
  }

  static summary = 'Mount a wafer and all its ancestors as a stack.'

  async run(): Promise<StackResult> {
    const {own, seederArgs} = splitSeederArgs(this.argv)
    const {args, flags} = await this.parse(Stack, own)
    const seed = await this.seedPlan(flags.seed, seederArgs)
    const {result, steps} = stackSteps(locationsFromEnv(), args.name, args.parent, {hooks: this.hookRunner(), seed})
    await runSteps(steps, progressMode({json: this.jsonEnabled()}))
    const already = result.alreadyStacked ? ' (already stacked: nothing to do)' : ''
    this.log(`${result.wafers.length} wafer${result.wafers.length === 1 ? '' : 's'} stacked at ${result.mountpoint}${already}`)
    return result
  }
}
