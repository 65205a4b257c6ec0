import {Args, Flags} from '@oclif/core'
import {mkdir} from 'node:fs/promises'

import {WafersCommand} from '../command.js'
import {WafersError} from '../lib/errors.js'
import {chownRisk, systemdDirsFromEnv} from '../lib/ops/enable.js'
import {StackResult, StackSession, stackSteps} from '../lib/ops/stack.js'
import {splitSeederArgs} from '../lib/seed/seed.js'
import {childless, readInventory} from '../lib/ops/inventory.js'
import {PRIVATE_DIR_MODE, WaferStore, locationsFromEnv} from '../lib/store/store.js'
import {interruptSignal} from '../lib/ui/interrupt.js'
import {BatchOutcome, progressMode, runBatch, runSteps} from '../lib/ui/progress.js'
import {plural} from '../lib/ui/render.js'

/** What `stack --name/--all --json` prints: one entry per stack, with its result or error. */
export type StackManyResult = Array<(StackResult & {error?: undefined}) | {error: string; name: string}>

export default class Stack extends WafersCommand {
  static args = {
    name: Args.string({description: 'The top wafer of the stack; it is mounted at $STACKS/NAME.'}),
    parent: Args.string({description: 'The wafer to create NAME on, when NAME does not exist yet.'}),
  }
  static description = `Traces the ancestry of wafer NAME through its parent files and mounts the whole stack with overlayfs at $STACKS/NAME (/var/lib/machines/NAME by default, where systemd-nspawn and machinectl find it). NAME's data is the writable upper layer; every ancestor's data is a read-only lower layer, nearest first. A wafer with no parent is bind-mounted on its own, so writes go straight into its data.

If NAME does not exist and PARENT is given, NAME is created first ($WAFERS/NAME/data, work and a parent file naming PARENT), with its own fresh etc/machine-id when the layers below have one. Stacking something already stacked does nothing and says so.

A wafer may be the writable top of one mounted stack or a lower layer of any number of them, never both: overlayfs's behaviour is undefined when a lower layer changes under it. Stacking that would break this is refused, naming the stacks in the way, unless --force. Mounted stacks are read from the live mount table, so stacks mounted by hand count too.

With --mstack nothing is mounted: wafers writes $STACKS/NAME.mstack (systemd.mstack(7), systemd 260 and later), links to the wafers' directories that systemd-nspawn -M NAME, systemd-mstack --mount or a unit's RootMStack= mount themselves when a machine starts; it survives a reboot with no unit, and no mount outlives wafers. Every check the mount makes it makes too; unstack removes it. Plugins' stack hooks do not run for it (nothing is mounted).

Stack many at once with --name (repeatable) or --all; each failure is reported by name and the others still go on. Ctrl-C finishes the stack under way and starts no other.

The last line on stdout of each stack is "N wafers stacked at MOUNTPOINT" ("1 wafer" for a base alone); progress goes to stderr. WAFERS and STACKS override /var/lib/wafers and /var/lib/machines.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> archbase2 archbase',
      description: 'Create wafer archbase2 on archbase and stack it:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> archbase2',
      description: 'Stack it again later (the parent is remembered):',
    },
    {command: '<%= config.bin %> <%= command.id %> archbase', description: 'Stack a base wafer on its own:'},
    {
      command: '<%= config.bin %> <%= command.id %> -n web -n db -n cache',
      description: 'Stack several existing wafers in one call:',
    },
    {command: '<%= config.bin %> <%= command.id %> --all', description: 'Stack every wafer that has no children:'},
    {
      command: 'WAFERS=/srv/wafers STACKS=/srv/stacks <%= config.bin %> <%= command.id %> web --json',
      description: 'Use other directories and print the result as JSON:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> web --mstack',
      description: 'Write $STACKS/web.mstack for systemd (260+) to mount when the machine starts:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> tiny --seed busybox',
      description: "Create base wafer tiny from the host's busybox and stack it:",
    },
  ]
  static flags = {
    all: Flags.boolean({description: 'Stack every wafer that no other wafer has as its parent.', exclusive: ['name']}),
    force: Flags.boolean({
      description: 'Stack even if a wafer would be a writable top and a lower layer at once (unsafe).',
    }),
    mstack: Flags.boolean({
      description: 'Write $STACKS/NAME.mstack for systemd 260+ to mount, instead of mounting now.',
    }),
    name: Flags.string({
      char: 'n',
      description: 'Also stack this existing wafer; repeat for more.',
      multiple: true,
    }),
    seed: Flags.string({
      description:
        'Fill NAME, a new base wafer, with this seeder first (see `wafers seeders`); its arguments follow `--`.',
    }),
  }
  static summary = 'Mount a wafer and all its ancestors as a stack.'

  async run(): Promise<StackManyResult | StackResult> {
    const {own, seederArgs} = splitSeederArgs(this.argv)
    const {args, flags} = await this.parse(Stack, own)
    const locations = locationsFromEnv()
    const options = {
      force: flags.force,
      hooks: this.hookRunner(),
      mstack: flags.mstack,
      seed: await this.seedPlan(flags.seed, seederArgs),
      warn: (message: string) => this.warn(message),
    }
    const mode = progressMode({json: this.jsonEnabled()})
    const interrupt = interruptSignal()
    try {
      // A seeder makes $WAFERS on a fresh machine: make it first, so that there is a store to lock.
      if (flags.seed !== undefined) await mkdir(locations.wafers, {mode: PRIVATE_DIR_MODE, recursive: true})
      return await this.locked(locations.wafers, async () => {
        if (!flags.all && !flags.name) {
          if (args.name === undefined) {
            throw new WafersError('give the NAME of a wafer to stack, or --name NAME (repeatable), or --all.')
          }

          const {result, steps} = stackSteps(locations, args.name, args.parent, options)
          await runSteps(steps, mode, interrupt.signal)
          this.log(summaryLine(result))
          await this.warnOfChown(result)
          return result
        }

        if (flags.all && args.name !== undefined) {
          throw new WafersError('--all stacks every wafer without children; give no NAME or PARENT with it.', {
            exit: 2,
          })
        }

        if (flags.seed !== undefined) {
          throw new WafersError('--seed fills one new base wafer; give it with NAME alone, not with --name or --all.', {
            exit: 2,
          })
        }

        const names = flags.all
          ? childless(await readInventory(new WaferStore(locations.wafers), {stacks: locations.stacks}))
          : (flags.name ?? [])
        const plans = [
          ...(args.name === undefined ? [] : [{name: args.name, parent: args.parent}]),
          ...names.map((name) => ({name, parent: undefined})),
        ]
        // One reading of the mount table and the hidden stacks for the whole call (under the lock).
        const session = new StackSession()
        const stacks = plans.map(({name, parent}) => ({
          name,
          ...stackSteps(locations, name, parent, {...options, session}),
        }))
        const outcomes = await runBatch(
          stacks.map(({name, steps}) => ({name, steps, title: `Stack ${name}`})),
          mode,
          interrupt.signal,
        )
        for (const [index, outcome] of outcomes.entries()) {
          if (outcome.state !== 'done') continue
          this.log(summaryLine(stacks[index].result))
          await this.warnOfChown(stacks[index].result)
        }

        this.reportFailures(outcomes)
        return outcomes.map((outcome, index) =>
          outcome.state === 'done'
            ? stacks[index].result
            : {error: outcome.error?.message ?? outcome.state, name: outcome.name},
        )
      })
    } finally {
      interrupt.dispose()
    }
  }

  /** machinectl would chown a stack under /var/lib/machines into its top wafer: say how to prevent it. */
  private async warnOfChown(result: StackResult): Promise<void> {
    const risk = await chownRisk(systemdDirsFromEnv(), result.mountpoint)
    if (risk) this.warn(risk)
  }

  private reportFailures(outcomes: BatchOutcome[]): void {
    const failed = outcomes.filter((outcome) => outcome.state === 'failed')
    if (!this.jsonEnabled()) {
      for (const outcome of failed) this.logToStderr(`cannot stack ${outcome.name}: ${outcome.error?.message}`)
    }

    this.endBatch('stacked', outcomes)
  }
}

function summaryLine(result: StackResult): string {
  const count = plural(result.wafers.length, 'wafer')
  return `${count} stacked at ${result.mountpoint}${result.alreadyStacked ? ' (already stacked: nothing to do)' : ''}`
}
