import {randomBytes} from 'node:crypto'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../../errors.js'
import type {Seeder} from '../../hooks.js'
import {run} from '../../host/run.js'

/** Where Debian's busybox-static (and most distributions) put busybox. */
export const BUSYBOX_PATHS = ['/bin/busybox', '/usr/bin/busybox', '/sbin/busybox', '/usr/sbin/busybox']

const DIRECTORIES = [
  'bin',
  'dev',
  'etc',
  'home',
  'proc',
  'root',
  'run',
  'sbin',
  'sys',
  'tmp',
  'usr/bin',
  'usr/lib',
  'usr/sbin',
  'var',
]

/**
 * A tiny root file system from the host's static busybox, with no network: enough for
 * `systemd-nspawn -D DIR /bin/sh -c ...`. Every applet is a symlink to /bin/busybox.
 */
export const busyboxSeeder: Seeder = {
  name: 'busybox',
  async seed(ctx) {
    if (ctx.args.length > 1)
      throw new WafersError(`the busybox seeder takes at most one argument, a busybox binary; got ${ctx.args.length}.`)
    const busybox = ctx.args[0] === undefined ? await findBusybox() : path.resolve(ctx.args[0])
    await checkStatic(busybox)
    ctx.report(`using ${busybox}`)
    const root = ctx.dataDir
    for (const dir of DIRECTORIES) {
      await fs.mkdir(path.join(root, dir), {recursive: true})
    }

    await fs.chmod(path.join(root, 'tmp'), 0o1777)
    await fs.chmod(path.join(root, 'root'), 0o700)
    await fs.copyFile(busybox, path.join(root, 'bin', 'busybox'))
    await fs.chmod(path.join(root, 'bin', 'busybox'), 0o755)
    const applets = await listApplets(busybox)
    for (const applet of applets) {
      const link = path.join(root, applet)
      if (applet === 'bin/busybox') continue
      await fs.mkdir(path.dirname(link), {recursive: true})
      await fs.symlink('/bin/busybox', link).catch((error) => {
        if (!isErrno(error, 'EEXIST')) throw error
      })
    }

    await fs.writeFile(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n')
    await fs.writeFile(path.join(root, 'etc', 'group'), 'root:x:0:\n')
    await fs.writeFile(path.join(root, 'etc', 'shadow'), 'root:*:1::::::\n', {mode: 0o600})
    await fs.writeFile(
      path.join(root, 'usr', 'lib', 'os-release'),
      'ID=busybox\nNAME=BusyBox\nPRETTY_NAME="BusyBox (wafers)"\n',
    )
    await fs.symlink('../usr/lib/os-release', path.join(root, 'etc', 'os-release'))
    await fs.writeFile(path.join(root, 'etc', 'machine-id'), `${randomBytes(16).toString('hex')}\n`, {mode: 0o444})
    ctx.report(`linked ${applets.length} applets`)
  },
  summary: "A tiny offline root file system from the host's static busybox.",
  usage: '[BUSYBOX]',
}

/** The applets busybox offers, as paths relative to the root (`bin/sh`, `usr/bin/awk`, ...). */
async function listApplets(busybox: string): Promise<string[]> {
  const {stdout} = await run(busybox, ['--list-full'])
  const applets = stdout
    .split('\n')
    .map((line) => line.trim().replace(/^\/+/, ''))
    .filter((line) => /^[a-z0-9/_.[-]+$/i.test(line) && !line.includes('..'))
  if (applets.length === 0) throw new WafersError(`${busybox} --list-full listed no applets.`)
  return applets
}

/**
 * The host's static busybox with applet `applet`, for running it inside a wafer (a RUN's USER
 * switch); refuses, saying what to install, when there is none.
 */
export async function staticBusyboxWith(applet: string): Promise<string> {
  const busybox = await findBusybox()
  await checkStatic(busybox)
  if (!(await listApplets(busybox)).some((line) => path.basename(line) === applet)) {
    throw new WafersError(`${busybox} has no ${applet} applet.`, {suggestions: ['Install the busybox-static package.']})
  }

  return busybox
}

async function findBusybox(): Promise<string> {
  for (const candidate of BUSYBOX_PATHS) {
    if (
      await fs.access(candidate).then(
        () => true,
        () => false,
      )
    )
      return candidate
  }

  throw new WafersError('busybox is not installed; install the busybox-static package.')
}

/** Refuses a dynamically linked busybox: inside the wafer it would find no libraries. */
async function checkStatic(busybox: string): Promise<void> {
  let header: Buffer
  try {
    const file = await fs.open(busybox)
    try {
      header = Buffer.alloc(64 * 1024)
      await file.read(header, 0, header.length, 0)
    } finally {
      await file.close()
    }
  } catch (error) {
    if (isErrno(error, 'ENOENT')) throw new WafersError(`${busybox} does not exist.`)
    throw error
  }

  if (!hasInterpreter(header)) return
  throw new WafersError(`${busybox} is dynamically linked, so it cannot run alone in a wafer.`, {
    suggestions: ['Install the busybox-static package.'],
  })
}

/** Whether an ELF file asks for a program interpreter (PT_INTERP), that is, is dynamically linked. */
export function hasInterpreter(elf: Buffer): boolean {
  if (elf.readUInt32BE(0) !== 0x7f_45_4c_46) throw new WafersError('busybox is not an ELF program.')
  const is64 = elf[4] === 2
  const little = elf[5] === 1
  const u16 = (at: number) => (little ? elf.readUInt16LE(at) : elf.readUInt16BE(at))
  const u32 = (at: number) => (little ? elf.readUInt32LE(at) : elf.readUInt32BE(at))
  const phoff = is64 ? Number(little ? elf.readBigUInt64LE(0x20) : elf.readBigUInt64BE(0x20)) : u32(0x1c)
  const phentsize = u16(is64 ? 0x36 : 0x2a)
  const phnum = u16(is64 ? 0x38 : 0x2c)
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize
    if (at + 4 > elf.length) break
    if (u32(at) === 3) return true
  }

  return false
}
