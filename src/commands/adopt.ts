import {Args} from '@oclif/core'

import {WafersCommand} from '../command.js'
import type {AdoptResult} from '../lib/oci/importctl.js'
import {locationsFromEnv} from '../lib/store/store.js'
import {interruptSignal} from '../lib/ui/interrupt.js'
import {progressMode, runSteps} from '../lib/ui/progress.js'

export default class Adopt extends WafersCommand {
  static args = {
    name: Args.string({
      description:
        'The image importctl pulled as $STACKS/NAME.mstack; a wafer of that name must not exist yet (but one an adopt of NAME that stopped midway made).',
      required: true,
    }),
  }
  static description = `systemd's importctl pull-oci (systemd 260 and later) unpacks each layer once to $STACKS/.oci-sha256:HEX and stacks them as $STACKS/NAME.mstack, with the machine's own files in its rw/. adopt makes each of those layers a layer wafer (layer-<ChainID>, as wafers pull names them, so an image wafers pulled shares them) and NAME a wafer on top holding the machine's own files, then rewrites NAME.mstack as wafers stack NAME --mstack writes it: systemd-nspawn -M NAME and machinectl start NAME run the same machine, now on wafers.

No file is copied: the layers' files are hard-linked (so $WAFERS and $STACKS must be on one file system), and rw/data is moved. importctl's .oci-sha256: directories stay as they were, for its other images; removing them later leaves the wafers whole. OCI whiteouts systemd 262 left as plain .wh. files become real whiteouts, so wafers' mount and systemd's show the image as its layers say.

NAME.nspawn (the image's command, environment and user, as importctl wrote it) and NAME.oci-config stay beside the stack. A machine that runs (NAME.mstack mounted, in any mount namespace, or processes in it) is refused, as is a NAME.mstack importctl did not write, a missing layer, and a NAME that is a wafer already; nothing is moved then. An adopt stopped after the machine's files became wafer NAME (killed, or the machine's stack could not be emptied) is finished by running it again: it rewrites NAME.mstack.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> debian',
      description: 'Take in what `importctl pull-oci docker.io/library/debian:trixie debian` pulled:',
    },
    {
      command: 'machinectl stop web && <%= config.bin %> <%= command.id %> web && machinectl start web',
      description: 'Adopt a machine that was running, and start it again, now on wafers:',
    },
  ]
  static summary = 'Take an image importctl pulled into the store as wafers, without copying its files.'

  async run(): Promise<AdoptResult> {
    const {args} = await this.parse(Adopt)
    const {adoptSteps} = await import('../lib/oci/importctl.js')
    const interrupt = interruptSignal()
    const mode = progressMode({json: this.jsonEnabled()})
    const {resolve, result, steps} = adoptSteps(locationsFromEnv(), args.name)
    try {
      await runSteps([resolve], mode, interrupt.signal)
      await runSteps(steps(), mode, interrupt.signal)
    } finally {
      interrupt.dispose()
    }

    const made = result.layers.filter((layer) => layer.made).length
    this.log(
      result.resumed
        ? `finished adopting ${result.name}: ${result.mstack} now stacks wafer ${result.name}`
        : `adopted ${result.name} (${result.layers.length} layers, ${made} new${result.moved ? ", with the machine's own files" : ''}): ${result.mstack} now stacks wafer ${result.name}`,
    )
    return result
  }
}
