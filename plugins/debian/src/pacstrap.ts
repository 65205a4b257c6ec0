import type {SeedContext, Seeder} from 'wafers'

import {findProgram, missingProgram} from './program.js'

/** pacstrap's own flags (the rest goes to pacman), and which of them take a value. */
const PACSTRAP_FLAGS = new Set(['-c', '-D', '-d', '-G', '-i', '-K', '-M', '-N', '-P', '-U'])
const PACSTRAP_FLAGS_WITH_VALUE = new Set(['-C'])

/**
 * The pacstrap command line for `target` from the seeder's arguments: pacstrap's own flags first,
 * then `-d` (a wafer's data is no mount point), the target, and the packages and pacman flags
 * (`base --ignore linux`); `base` when no package is named.
 */
export function pacstrapArgs(target: string, args: string[]): string[] {
  const own: string[] = []
  let i = 0
  while (i < args.length) {
    const arg = args[i]
    if (PACSTRAP_FLAGS_WITH_VALUE.has(arg)) {
      if (args[i + 1] === undefined) throw new Error(`pacstrap's ${arg} needs a value`)
      own.push(arg, args[i + 1])
      i += 2
    } else if (PACSTRAP_FLAGS.has(arg) || /^-[cdDGiKMNPU]{2,}$/.test(arg)) {
      own.push(arg)
      i++
    } else {
      break
    }
  }

  const rest = args.slice(i)
  const packages = rest.some((arg) => !arg.startsWith('-')) ? rest : ['base', ...rest]
  return [...own.filter((flag) => flag !== '-d'), '-d', target, ...packages]
}

export const pacstrapSeeder: Seeder = {
  name: 'pacstrap',
  async seed(ctx: SeedContext) {
    const args = pacstrapArgs(ctx.dataDir, ctx.args)
    const program = await findProgram('pacstrap')
    if (program === undefined) throw missingProgram('pacstrap', 'arch-install-scripts')
    ctx.report(`pacstrap ${args.slice(args.indexOf(ctx.dataDir) + 1).join(' ')}`)
    await ctx.run(program, args, {package: 'arch-install-scripts'})
  },
  summary: 'Arch Linux with pacstrap: packages and pacman flags, e.g. base --ignore linux.',
  usage: '[PACSTRAP-FLAGS] [PACKAGES...] [--ignore PKG]',
}
