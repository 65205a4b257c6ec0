import {Args} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {CopyResult, copyWafer} from '../lib/ops/copy.js'
import {locationsFromEnv} from '../lib/store/store.js'

export default class Cp extends WafersCommand {
  static args = {
    src: Args.string({description: 'The wafer to copy.', required: true}),
    dst: Args.string({description: 'The name of the copy; must not exist yet.', required: true}),
  }
  static description = `Makes DST a sibling of SRC: a wafer on the same parent whose data is a copy of SRC's, with owners, modes, timestamps, extended attributes (overlay ones included), hard links, devices and whiteouts kept, sharing blocks with SRC where the file system can (cp --reflink=auto). A pulled or built image's config comes along, so DST stacks and pushes as SRC does.

It refuses a DST that exists, and an SRC that is stacked (its files could change while they are copied): unstack it first. An SRC that is only a read-only lower layer of a stack is copied.`
  static enableJsonFlag = true
  static examples = [
    {command: '<%= config.bin %> <%= command.id %> web web-try', description: 'Try a change on a copy of web:'},
    {command: '<%= config.bin %> <%= command.id %> web web-try --json', description: 'Print {name, parent, source}:'},
  ]
  static summary = 'Copy a wafer into a new sibling on the same parent.'

  async run(): Promise<CopyResult> {
    const {args} = await this.parse(Cp)
    const locations = locationsFromEnv()
    const result = await copyWafer(locations, args.src, args.dst)
    this.log(`copied ${result.source} to ${result.name}${result.parent === null ? '' : ` on ${result.parent}`}`)
    return result
  }
}
