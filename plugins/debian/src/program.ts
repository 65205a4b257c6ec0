import {constants, promises as fs} from 'node:fs'
import path from 'node:path'

/** Where the executable `name` is on PATH, or undefined. */
export async function findProgram(name: string, envPath = process.env.PATH ?? ''): Promise<string | undefined> {
  for (const dir of envPath.split(':').filter((entry) => entry !== '')) {
    const file = path.join(dir, name)
    if (
      await fs.access(file, constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return file
  }

  return undefined
}

/** One sentence saying which package brings a missing program. */
export function missingProgram(name: string, pkg: string): Error {
  return new Error(
    `${name} is not installed or not on PATH; install the ${pkg} package (apt-get install ${pkg}, or pacman -S ${pkg})`,
  )
}
