import {promises as fs} from 'node:fs'

/** A process that keeps a directory busy. */
export interface ProcessUse {
  command: string
  pid: number
}

/**
 * The processes whose root, working directory or open files are in the stack mounted at
 * `mountpoint`, found by reading /proc (what fuser -m would say), sorted by pid. Processes in
 * other mount namespaces count too (a container started with systemd-nspawn keeps the stack busy
 * without making umount fail): a container whose root is the stack shares its root's inode, and
 * with `ownDevice` (an overlay: its own file system) anything open on that device counts. Open
 * files are looked at only with `openFiles` (one stat each, slow on a busy host).
 */
export async function processesUsing(
  mountpoint: string,
  options: {openFiles?: boolean; ownDevice?: boolean} = {},
): Promise<ProcessUse[]> {
  const top = await fs.stat(mountpoint)
  const inside = (target: string) => target === mountpoint || target.startsWith(mountpoint + '/')
  const onStack = async (link: string, isRoot: boolean) => {
    const stat = await fs.stat(link).catch(() => undefined)
    if (stat === undefined || stat.dev !== top.dev) return false
    return options.ownDevice || (isRoot && stat.ino === top.ino)
  }

  const pids = (await fs.readdir('/proc')).filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)
  const users = await Promise.all(
    pids.map(async (pid): Promise<ProcessUse | undefined> => {
      const base = `/proc/${pid}`
      const fds = options.openFiles ? await fs.readdir(`${base}/fd`).catch(() => [] as string[]) : []
      const links = ['root', 'cwd', ...fds.map((fd) => `fd/${fd}`)].map((link) => `${base}/${link}`)
      const targets = await Promise.all(links.map((link) => fs.readlink(link).catch(() => '')))
      let busy = targets.some((target) => inside(target))
      // Without a device of its own (a bind mount), only a root at the stack's top can be told apart.
      for (const [index, link] of (options.ownDevice ? links : links.slice(0, 1)).entries()) {
        if (busy) break
        // eslint-disable-next-line no-await-in-loop
        busy = await onStack(link, index === 0)
      }

      if (!busy) return undefined
      const command = (await fs.readFile(`${base}/comm`, 'utf8').catch(() => '?')).trim()
      return {command, pid: Number(pid)}
    }),
  )
  return users.filter((user) => user !== undefined).sort((a, b) => a.pid - b.pid)
}
