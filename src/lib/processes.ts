import {promises as fs} from 'node:fs'

/** A process that keeps a directory busy. */
export interface ProcessUse {
  command: string
  pid: number
}

/**
 * The processes whose root, working directory or open files are at or under `dir`, found by
 * reading /proc (what fuser -m would say), sorted by pid.
 */
export async function processesUsing(dir: string): Promise<ProcessUse[]> {
  const inside = (target: string) => target === dir || target.startsWith(dir + '/')
  const pids = (await fs.readdir('/proc')).filter((entry) => /^\d+$/.test(entry))
  const users = await Promise.all(
    pids.map(async (pid): Promise<ProcessUse | undefined> => {
      const base = `/proc/${pid}`
      const links = ['cwd', 'root']
      const fds = await fs.readdir(`${base}/fd`).catch(() => [] as string[])
      links.push(...fds.map((fd) => `fd/${fd}`))
      const targets = await Promise.all(links.map((link) => fs.readlink(`${base}/${link}`).catch(() => '')))
      if (!targets.some((target) => inside(target))) return undefined
      const command = (await fs.readFile(`${base}/comm`, 'utf8').catch(() => '?')).trim()
      return {command, pid: Number(pid)}
    }),
  )
  return users.filter((user) => user !== undefined).sort((a, b) => a.pid - b.pid)
}
