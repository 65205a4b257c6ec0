import {Args, Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {splitSeederArgs} from '../lib/seed/seed.js'
import {CreateResult, createSteps} from '../lib/ops/create.js'
import {locationsFromEnv} from '../lib/store/store.js'
import {progressMode, runSteps} from '../lib/ui/progress.js'

export default class Create extends WafersCommand {
  static args = {
    name: Args.string({description: 'The new wafer; it is made at $WAFERS/NAME.', required: true}),
    parent: Args.string({description: 'The wafer to put NAME on; without it NAME is a base wafer.'}),
  }
  static description = `Creates wafer NAME ($WAFERS/NAME/data, work, and a parent file naming PARENT) without stacking it. A new wafer on a PARENT whose layers have an etc/machine-id gets its own fresh one.

With --seed, NAME is a new base wafer filled by that seeder (see \`wafers seeders\`); everything after \`--\` goes to the seeder. The wafer appears only once the seeder has finished: a seeder that fails leaves no wafer behind.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> tiny --seed busybox',
      description: "Make a tiny base wafer from the host's static busybox:",
    },
    {
      command:
        '<%= config.bin %> <%= command.id %> debian --seed debootstrap -- bookworm --variant=minbase --include=systemd,dbus',
      description: 'Make a bootable Debian base wafer (with the wafers-plugin-debian-arch plugin):',
    },
    {
      command: '<%= config.bin %> <%= command.id %> imported --seed tar -- rootfs.tar.xz',
      description: 'Make a base wafer from a root file system tarball:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> web debian',
      description: 'Make wafer web on debian, to stack later:',
    },
  ]
  static flags = {
    seed: Flags.string({description: 'Fill the new base wafer with this seeder; its arguments follow `--`.'}),
  }
  static summary = 'Create a wafer without stacking it, optionally seeding a base wafer.'
  static usage = '<%= command.id %> NAME [PARENT] [--json] [--seed SEEDER] [-- SEEDER-ARGS...]'

  async run(): Promise<CreateResult> {
    const {own, seederArgs} = splitSeederArgs(this.argv)
    const {args, flags} = await this.parse(Create, own)
    const plan = await this.seedPlan(flags.seed, seederArgs)
    const {result, steps} = createSteps(locationsFromEnv(), args.name, args.parent, plan)
    await runSteps(steps, progressMode({json: this.jsonEnabled()}))
    const how = result.parent === null ? 'base wafer' : 'wafer'
    const on = result.parent === null ? '' : ` on ${result.parent}`
    const seeded = result.seeder === null ? '' : ` seeded with ${result.seeder}`
    this.log(`created ${how} ${result.name}${on}${seeded} at ${result.data}`)
    return result
  }
}
