import {Args} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {BootResult, disable, systemdDirsFromEnv} from '../lib/ops/enable.js'
import {checkName} from '../lib/store/names.js'

export default class Disable extends WafersCommand {
  static args = {
    name: Args.string({description: 'The wafer whose stack should no longer come back at boot.', required: true}),
  }
  static description = `Undoes "wafers enable NAME": removes the symlinks that start wafers-stack-NAME.service at boot, the unit itself, and the NAME.nspawn file wafers wrote (one you wrote yourself stays). The stack stays mounted until "wafers unstack NAME" or the next reboot; run "systemctl daemon-reload" so a running systemd forgets the unit.`
  static enableJsonFlag = true
  static examples = [
    {command: '<%= config.bin %> <%= command.id %> archbase2', description: 'Stop stacking archbase2 at boot:'},
  ]
  static summary = 'Stop stacking a wafer at boot.'

  async run(): Promise<BootResult> {
    const {args} = await this.parse(Disable)
    const result = await disable(systemdDirsFromEnv(), checkName(args.name))
    this.log(result.changed ? `disabled ${result.unitFile}` : `${result.unitFile} was not enabled: nothing to do`)
    return result
  }
}
