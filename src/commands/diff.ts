import {Args} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {CHANGE_LETTERS, DiffEntry, diffWafer} from '../lib/ops/diff.js'
import {checkName} from '../lib/store/names.js'
import {WaferStore, locationsFromEnv} from '../lib/store/store.js'

export default class Diff extends WafersCommand {
  static args = {
    name: Args.string({description: 'The wafer whose changes to show.', required: true}),
  }
  static description = `Lists what wafer NAME changes in its stack, relative to the wafers below it, one path a line as docker diff does: "A /path" added, "C /path" changed, "D /path" deleted. It reads NAME's data as overlayfs does: a whiteout (a character device 0/0) is a deletion, and an opaque directory (one deleted and made again in the stack) hides everything below it, so what it no longer holds shows as deleted. A directory that holds changes and exists below shows as changed. Works whether NAME is stacked or not; needs root to read overlayfs's trusted.* attributes.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> archbase2',
      description: 'See what archbase2 changes on top of archbase:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> archbase2 --json',
      description: 'Print an array of {path, change} objects:',
    },
  ]
  static summary = 'Show the files a wafer adds, changes and deletes.'

  async run(): Promise<DiffEntry[]> {
    const {args} = await this.parse(Diff)
    const store = new WaferStore(locationsFromEnv().wafers)
    checkName(args.name)
    const entries = await diffWafer(store, args.name)
    for (const entry of entries) this.log(`${CHANGE_LETTERS[entry.change]} ${entry.path}`)
    return entries
  }
}
