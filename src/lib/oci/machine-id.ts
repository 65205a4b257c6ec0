import {promises as fs} from 'node:fs'
import path from 'node:path'

import {isErrno} from '../errors.js'
import {EntryBlanker, copyEmptyingEntry} from '../layer/tar/blank.js'

/*
 * A machine id names one machine: an image must not carry one, or every container made from it
 * shares it. Push leaves /etc/machine-id in the image but empty, as image builders do (systemd
 * reads an empty one as "not set yet" and gives the container its own at first boot), and pull
 * gives the top it makes a fresh one, as `stack NAME PARENT` does.
 */

const MACHINE_ID = 'etc/machine-id'

/** Whether wafer directory `data` has an etc/machine-id with something in it (a regular file, never followed). */
export async function hasMachineId(data: string): Promise<boolean> {
  const stat = await fs.lstat(path.join(data, MACHINE_ID)).catch((error: unknown) => {
    if (isErrno(error, 'ENOENT') || isErrno(error, 'ENOTDIR')) return undefined
    throw error
  })
  return stat !== undefined && stat.isFile() && stat.size > 0
}

/**
 * Whether wafer directory `data` holds nothing but its machine id (`etc/` and `etc/machine-id`,
 * which `stack NAME PARENT` and pull write into every new top): push makes no layer of it.
 */
export async function onlyMachineId(data: string): Promise<boolean> {
  const names = await fs.readdir(data)
  if (names.length !== 1 || names[0] !== 'etc') return false
  const etc = await fs.lstat(path.join(data, 'etc'))
  if (!etc.isDirectory()) return false
  const inside = await fs.readdir(path.join(data, 'etc'))
  if (inside.length !== 1 || inside[0] !== 'machine-id') return false
  return (await fs.lstat(path.join(data, MACHINE_ID))).isFile()
}

/**
 * Copies the gzip layer `input` to `output` (a new file) with the content of its etc/machine-id
 * emptied, everything else byte for byte (see copyEmptyingEntry).
 */
export async function blankMachineId(
  input: string,
  output: string,
): Promise<{diffId: string; digest: string; size: number}> {
  return copyEmptyingEntry(input, output, MACHINE_ID)
}

/** The stream rewrite that empties etc/machine-id (see EntryBlanker). */
export function machineIdBlanker(): EntryBlanker {
  return new EntryBlanker(MACHINE_ID)
}
