import {Args} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {BootResult, enable, installedProgram, systemdDirsFromEnv} from '../lib/ops/enable.js'
import {locationsFromEnv} from '../lib/store/store.js'

export default class Enable extends WafersCommand {
  static args = {
    name: Args.string({description: 'The wafer whose stack should come back at boot.', required: true}),
  }
  static description = `Writes a systemd service, wafers-stack-NAME.service in /etc/systemd/system, that runs the installed "wafers stack NAME" at boot (and "wafers unstack NAME" at shutdown), ordered before machines.target and required by systemd-nspawn@NAME.service, so "machinectl start NAME" and containers enabled with "machinectl enable" always find their stack. It enables the unit as "systemctl enable" does, with symlinks in machines.target.wants, multi-user.target.wants and systemd-nspawn@NAME.service.requires, so it works even where systemctl cannot run.

It also writes /etc/systemd/nspawn/NAME.nspawn with PrivateUsers=no and PrivateUsersOwnership=off. machinectl starts containers with -U, which on an overlay (overlayfs cannot ID-map) chowns the whole tree: every file of every wafer below would be copied up into NAME. An NAME.nspawn you wrote yourself is left alone if it already says PrivateUsers=no, and refused otherwise.

The unit runs the wafers found on PATH (/usr/local/bin/wafers after "npm install -g" or "npm link"), never one inside a checkout: a unit pointing into a clone breaks when the clone moves. With none installed, enable refuses and says how to install it.

Nothing is stacked now: run "wafers stack NAME" for that, and "systemctl daemon-reload" so a running systemd sees the unit. WAFERS_UNIT_DIR and WAFERS_NSPAWN_DIR override the two directories.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> archbase2',
      description: 'Stack archbase2 at every boot, and keep machinectl from chowning it:',
    },
    {
      command:
        '<%= config.bin %> <%= command.id %> archbase2 && systemctl daemon-reload && machinectl enable archbase2',
      description: 'Also boot the container at startup:',
    },
  ]
  static summary = 'Stack a wafer at every boot, safe for machinectl.'

  async run(): Promise<BootResult> {
    const {args} = await this.parse(Enable)
    const program = installedProgram(process.env.PATH ?? '', this.config.root, {
      dataDir: this.config.dataDir,
      node: process.execPath,
    })
    const result = await enable(locationsFromEnv(), systemdDirsFromEnv(), args.name, program)
    this.log(`enabled ${result.unitFile}`)
    if (result.nspawnFile) this.log(`wrote ${result.nspawnFile}`)
    return result
  }
}
