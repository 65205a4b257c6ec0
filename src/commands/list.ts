import {Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {WaferInfo, diskUsage, mapLimit, originNote, readInventory} from '../lib/ops/inventory.js'
import {WaferStore, locationsFromEnv} from '../lib/store/store.js'
import {fitTable, humanSize} from '../lib/ui/render.js'

export default class List extends WafersCommand {
  static aliases = ['ls']
  static description = `One line per wafer in $WAFERS: its parent, its depth (the number of wafers in its stack, itself included), whether it is stacked, where, and how much disk its own data takes. STACKED is "yes" for the top of a live stack, "lower" for a wafer that is a read-only layer of someone else's live stack, "in use" for one whose own files processes use, "no" otherwise; stacks are found in the live mount table, whoever mounted them, and so are the uses that table hides, which rm and stack refuse as well: a stack mounted in another mount namespace (a container's), one detached with unstack --lazy that processes still use, processes working in a wafer's own files. Those are said in NOTE ("still in use as the top of the stack mounted at /x in the mount namespace of 12 (sleep)"); --json gives them as elsewhere, and inUse says whether rm would refuse the wafer. A wafer whose ancestry is broken (missing parent, loop) is listed with a note, and so is where a wafer came from: "image layer" for a wafer that holds one layer of a pulled image, "from REF" for the top wafer a pull made.

On a terminal too narrow for the table, the generated names of image layers and build steps (layer-… and build-… with 32 or 40 hex digits) are shortened as git shortens commit ids, to the fewest digits (at least 8) that tell them apart, with "…" after them, and the NOTE column is cut to fit; --wide, --json and a pipe give them whole.

Sizes mean reading every file of every wafer, so --json leaves them out unless you ask with --size, and --no-size leaves them out of the table.`
  static enableJsonFlag = true
  static examples = [
    {command: '<%= config.bin %> <%= command.id %>', description: 'Show every wafer with its size:'},
    {
      command: '<%= config.bin %> <%= command.id %> --no-size',
      description: 'Skip the sizes, for a quick look at thousands of wafers:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> --json',
      description:
        'Print an array of {name, parent, depth, stacked, mountpoint, lowerOf, inUse} objects (with elsewhere when in use where the mount table does not show, layer and image for pulled wafers):',
    },
  ]
  static flags = {
    size: Flags.boolean({
      allowNo: true,
      description: "Measure the disk space of each wafer's data (default: on for the table, off with --json).",
    }),
    wide: Flags.boolean({description: 'Print whole names and notes even where the terminal is too narrow for them.'}),
  }
  static summary = 'List wafers with their parent, depth, stacked state and size.'

  async run(): Promise<WaferInfo[]> {
    const {flags} = await this.parse(List)
    const locations = locationsFromEnv()
    const store = new WaferStore(locations.wafers)
    const wafers = [...(await readInventory(store, {hidden: true, stacks: locations.stacks})).wafers.values()]
    const measure = flags.size ?? !this.jsonEnabled()
    if (measure) {
      const sizes = await mapLimit(wafers, 4, async (wafer) => diskUsage(store.dataDir(wafer.name)))
      for (const [i, wafer] of wafers.entries()) wafer.size = sizes[i]
    }

    if (this.jsonEnabled()) return wafers
    if (wafers.length === 0) {
      this.log(`no wafers in ${store.root}`)
      return wafers
    }

    const header = ['NAME', 'PARENT', 'DEPTH', 'STACKED', 'MOUNTPOINT', ...(measure ? ['SIZE'] : []), 'NOTE']
    const rows = wafers.map((wafer) => [
      wafer.name,
      wafer.parent ?? '-',
      String(wafer.depth),
      stackedCell(wafer),
      wafer.mountpoint ?? '-',
      ...(measure ? [humanSize(wafer.size ?? 0)] : []),
      [wafer.problem, ...(wafer.elsewhere ?? []).map((use) => use.how), originNote(wafer)].filter(Boolean).join('; '),
    ])
    // A terminal gets a table that fits it; a pipe, and --wide, get every name whole.
    const width = flags.wide || !process.stdout.isTTY ? undefined : process.stdout.columns || undefined
    for (const line of fitTable(header, rows, {names: [0, 1], width})) this.log(line)
    return wafers
  }
}

/** yes (a top), lower (a read-only layer), in use (processes in its own files), or no. */
function stackedCell(wafer: WaferInfo): string {
  if (wafer.stacked) return 'yes'
  if (wafer.lowerOf.length > 0 || wafer.elsewhere?.some((use) => use.role === 'lower')) return 'lower'
  return wafer.inUse ? 'in use' : 'no'
}
