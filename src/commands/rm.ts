import {Args, Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {WafersError} from '../lib/errors.js'
import {RemoveResult, planRemoval, removeWafers} from '../lib/ops/remove.js'
import {WaferStore, locationsFromEnv} from '../lib/store/store.js'
import {confirm} from '../lib/ui/confirm.js'

export default class Rm extends WafersCommand {
  static args = {
    name: Args.string({description: 'A wafer to delete; give as many as you like.', required: true}),
  }
  static description = `Deletes each wafer's directory ($WAFERS/NAME with its data, work and parent file) and its short link in $WAFERS/.links. It refuses, changing nothing, a wafer that is stacked, a wafer that is a lower layer of a live stack, a wafer that processes still use through a stack detached with unstack --lazy, a stack in another mount namespace or its own files (naming them), and a wafer that other wafers are built on, unless those are named too or --recursive is given: then the whole subtree goes, deepest wafer first.

On a terminal it lists what it will delete and asks first; --yes skips the question. When stdin is not a terminal it never asks, and deletes only with --yes.`
  static enableJsonFlag = true
  static examples = [
    {command: '<%= config.bin %> <%= command.id %> scratch', description: 'Delete one wafer, after a question:'},
    {
      command: '<%= config.bin %> <%= command.id %> --recursive --yes archbase',
      description: 'Delete archbase and every wafer built on it, without asking:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> web-old db-old --yes --json',
      description: 'Delete several wafers from a script:',
    },
  ]
  static flags = {
    recursive: Flags.boolean({
      char: 'r',
      description: 'Also delete every wafer built on the named ones, deepest first.',
    }),
    yes: Flags.boolean({char: 'y', description: 'Delete without asking (required when stdin is not a terminal).'}),
  }
  static strict = false
  static summary = 'Delete wafers that are not in use.'

  async run(): Promise<RemoveResult> {
    const {argv, flags} = await this.parse(Rm)
    const locations = locationsFromEnv()
    const store = new WaferStore(locations.wafers)
    const names = argv as string[]
    const wafers = await planRemoval(locations, names, {recursive: flags.recursive})
    if (!flags.yes) {
      if (!process.stdin.isTTY) {
        throw new WafersError(
          `stdin is not a terminal, so wafers rm cannot ask before deleting ${wafers.length === 1 ? `wafer ${wafers[0]}` : `${wafers.length} wafers`}; add --yes to delete without asking.`,
        )
      }

      const question =
        wafers.length === 1
          ? `Delete wafer ${wafers[0]} and all its data? [y/N] `
          : `Delete ${wafers.length} wafers (${wafers.join(', ')}) and all their data? [y/N] `
      if (!(await confirm(question))) {
        this.log('nothing removed')
        return {removed: []}
      }
    }

    // Check again under the store lock, so that no stack or child can come up between check and delete.
    const result = await this.locked(locations.wafers, async () => {
      const now = await planRemoval(locations, names, {recursive: flags.recursive})
      if (now.join('\n') !== wafers.join('\n')) {
        throw new WafersError(
          'the wafers to remove changed while wafers rm was running; nothing was removed, run it again.',
        )
      }

      const removed = await removeWafers(store, now)
      // The image settings wafers wrote for a removed wafer go with it; a user's own stay.
      const {removeSettings} = await import('../lib/ops/settings.js')
      for (const name of removed.removed) await removeSettings(locations.stacks, name)
      return removed
    })
    for (const name of result.removed) this.log(`removed ${name}`)
    return result
  }
}
