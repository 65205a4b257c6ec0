import {Args, Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {WafersError} from '../lib/errors.js'
import {ExportResult, exportWafer} from '../lib/ops/export.js'
import {locationsFromEnv} from '../lib/store/store.js'
import {humanSize, plural} from '../lib/ui/render.js'

export default class Export extends WafersCommand {
  static args = {
    name: Args.string({description: 'The wafer whose stack to export.', required: true}),
    file: Args.string({
      description: 'The tarball to write: .tar, .tar.gz (.tgz), .tar.zst or .tar.xz; - for a plain tar on stdout.',
      required: true,
    }),
  }
  static description = `Writes what a container on NAME's stack sees (the layers merged: no whiteouts, no overlay attributes) as a plain root file system tarball, the kind machinectl import-tar and podman import take: POSIX format, numeric owners, modes, timestamps, extended attributes and file capabilities, hard links and devices. The ending of FILE says how to compress it. It streams: memory stays flat however big the stack.

A file is written under a temporary name beside FILE and renamed when complete, so a failed export leaves nothing; an existing FILE is replaced only with --force. While the export runs the stack's wafers cannot be removed, renamed or stacked writable. It refuses a stack one of whose wafers is stacked as a writable top right now: unstack it first.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> web web.tar.zst',
      description: "Write web's root file system, compressed with zstd:",
    },
    {
      command: '<%= config.bin %> <%= command.id %> web web.tar && machinectl import-tar web.tar web',
      description: 'Hand it to machinectl:',
    },
    {command: '<%= config.bin %> <%= command.id %> web - | podman import - web', description: 'Stream it into podman:'},
  ]
  static flags = {
    force: Flags.boolean({char: 'f', description: 'Replace FILE if it exists.'}),
  }
  static summary = "Write a wafer's merged stack as a root file system tarball."

  async run(): Promise<ExportResult> {
    const {args, flags} = await this.parse(Export)
    if (args.file === '-' && this.jsonEnabled()) {
      throw new WafersError(
        'with - the tarball goes to stdout, where --json would go too; give a FILE, or leave out --json.',
      )
    }

    const result = await exportWafer(locationsFromEnv(), args.name, args.file, {force: flags.force})
    if (result.file !== '-')
      this.log(
        `exported ${result.name} (${plural(result.wafers.length, 'wafer')}) to ${result.file}, ${humanSize(result.bytes)}`,
      )
    return result
  }
}
