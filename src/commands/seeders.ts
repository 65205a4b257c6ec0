import {WafersCommand} from '../command.js'
import {collectSeeders} from '../lib/seed/seed.js'

/** One seeder, as `wafers seeders --json` lists it. */
export interface SeederListing {
  name: string
  plugin: string
  summary: string
  usage: string
}

export default class Seeders extends WafersCommand {
  static description = `Seeders fill a new base wafer: \`wafers create NAME --seed SEEDER -- ARGS...\` or \`wafers stack NAME --seed SEEDER -- ARGS...\`. wafers brings dir, tar and busybox; plugins add more (wafers-plugin-debian-arch adds debootstrap and pacstrap).`
  static enableJsonFlag = true
  static examples = [
    {command: '<%= config.bin %> <%= command.id %>', description: 'List the seeders and where they come from:'},
    {command: '<%= config.bin %> <%= command.id %> --json', description: 'The same, for scripts:'},
  ]
  static summary = 'List the seeders that can fill a new base wafer, and their plugins.'

  async run(): Promise<SeederListing[]> {
    await this.parse(Seeders)
    const {problems, seeders} = await collectSeeders(this.hookRunner())
    for (const problem of problems) this.warn(problem)
    const listing = seeders.map(({name, plugin, summary, usage}) => ({name, plugin, summary, usage}))
    const width = Math.max(0, ...listing.map((entry) => `${entry.name} ${entry.usage}`.trim().length))
    for (const entry of listing) {
      this.log(`${`${entry.name} ${entry.usage}`.trim().padEnd(width)}  ${entry.summary} (${entry.plugin})`)
    }

    return listing
  }
}
