import {Args, Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {UnstackResult, unstack} from '../lib/ops/stack.js'
import {checkName} from '../lib/store/names.js'
import {locationsFromEnv} from '../lib/store/store.js'
import {interruptSignal} from '../lib/ui/interrupt.js'
import {BatchOutcome} from '../lib/ui/progress.js'

export default class Unstack extends WafersCommand {
  static args = {
    name: Args.string({description: 'A stack to take down, by wafer name; give as many as you like.', required: true}),
  }
  static description = `Unmounts each stack at $STACKS/NAME and removes its empty mount point. The wafers' data is never deleted: stack them again at any time. A name with nothing stacked is reported and skipped.

A stack that a process still uses (its working directory, root or open files are inside) is left mounted, and the processes are named; --lazy detaches it anyway, says which processes still use it, and it goes away when they leave. With many names, each failure is reported and the others still go on; Ctrl-C finishes the one under way and starts no other.`
  static enableJsonFlag = true
  static examples = [
    {command: '<%= config.bin %> <%= command.id %> archbase2', description: 'Take one stack down:'},
    {command: '<%= config.bin %> <%= command.id %> web db cache', description: 'Take several down:'},
    {
      command: '<%= config.bin %> <%= command.id %> web --lazy',
      description: 'Detach a stack that a process still uses:',
    },
  ]
  static flags = {
    lazy: Flags.boolean({description: 'Detach stacks that are in use now, and let them go when their users leave.'}),
  }
  static strict = false
  static summary = 'Unmount stacks; their wafers stay.'

  async run(): Promise<UnstackResult[]> {
    const {argv, flags} = await this.parse(Unstack)
    const names = argv as string[]
    for (const name of names) checkName(name)
    const locations = locationsFromEnv()
    const hooks = this.hookRunner()
    const results: UnstackResult[] = []
    const outcomes: BatchOutcome[] = names.map((name) => ({name, state: 'not started'}))
    const interrupt = interruptSignal()
    try {
      await this.locked(locations.wafers, async () => {
        for (const [index, name] of names.entries()) {
          if (interrupt.signal.aborted) break
          try {
            const result = await unstack(locations, name, {hooks, lazy: flags.lazy})
            results.push(result)
            outcomes[index].state = 'done'
            this.log(said(result))
          } catch (error) {
            if (names.length === 1) throw error
            outcomes[index] = {error: error as Error, name, state: 'failed'}
            if (!this.jsonEnabled()) this.logToStderr(`cannot unstack ${name}: ${(error as Error).message}`)
          }
        }
      })
    } finally {
      interrupt.dispose()
    }

    this.endBatch('unstacked', outcomes)
    return results
  }
}

/** The line for one stack: a detached stack that is still in use says so, and by what. */
function said(result: UnstackResult): string {
  if (!result.unstacked) return `nothing stacked at ${result.mountpoint}`
  const users = result.stillUsedBy ?? []
  if (users.length === 0) return `unstacked ${result.mountpoint}`
  const who = users.map((user) => `${user.pid} (${user.command})`).join(', ')
  return `detached ${result.mountpoint}, but it is still in use by ${who}: its wafers stay busy until they leave`
}
