import {Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {pushCacheSource} from '../lib/oci/cache.js'
import {workDirsHeld} from '../lib/oci/workdir.js'
import {PruneResult, prune} from '../lib/ops/prune.js'
import {locationsFromEnv} from '../lib/store/store.js'
import {humanSize, plural, table} from '../lib/ui/render.js'

const KIND_WORDS = {build: 'build step', cache: 'cache', layer: 'image layer'}

export default class Prune extends WafersCommand {
  static description = `Removes what wafers made on its own and nothing uses any more:
- image layer wafers (layer-...) a pull made, that no remaining wafer is built on;
- build step wafers (build-...), the cache of wafers build, that no named wafer is built on (old generations --no-cache left behind, steps of Containerfiles since changed);
- push cache entries ($WAFERS/.oci) of wafers that are gone, and blobs no entry names;
- caches that plugins offer (a seeder's downloads), through their wafers:prune hook.

A wafer you named (wafers create, pull, build -t) and everything below it always stays. So does what is in use, as for rm: a wafer stacked or a lower layer of a stack, in any mount namespace, a wafer a running build or pull may still take; while a pull runs image layer wafers stay, while a build runs build step wafers stay, while a push runs the push cache stays (the notes say so).

--dry-run lists what would go and how much space it takes, and removes nothing.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> --dry-run',
      description: 'See what would go, and how much space it takes:',
    },
    {command: '<%= config.bin %> <%= command.id %>', description: 'Remove it:'},
    {
      command: '<%= config.bin %> <%= command.id %> --json',
      description: 'Remove it and print {bytes, dryRun, items: [{kind, name, path?, size}], notes}:',
    },
  ]
  static flags = {
    'dry-run': Flags.boolean({
      char: 'n',
      description: 'List what would be removed, and its size, without removing it.',
    }),
  }
  static summary = 'Remove image layers, build steps and caches that nothing uses.'

  async run(): Promise<PruneResult> {
    const {flags} = await this.parse(Prune)
    const locations = locationsFromEnv()
    const result = await prune(locations, {
      caches: [pushCacheSource(locations.wafers)],
      dryRun: flags['dry-run'],
      hooks: this.hookRunner(),
      pullRunning: () => workDirsHeld(locations.wafers, 'pull'),
    })
    if (this.jsonEnabled()) return result
    for (const note of result.notes) this.logToStderr(`note: ${note}`)
    if (result.items.length === 0) {
      this.log('nothing to prune')
      return result
    }

    const rows = result.items.map((item) => [KIND_WORDS[item.kind], item.name, humanSize(item.size)])
    for (const line of table(['KIND', 'NAME', 'SIZE'], rows)) this.log(line)
    const what = plural(result.items.length, 'item')
    this.log(
      result.dryRun
        ? `would remove ${what}, ${humanSize(result.bytes)}`
        : `removed ${what}, ${humanSize(result.bytes)}`,
    )
    return result
  }
}
