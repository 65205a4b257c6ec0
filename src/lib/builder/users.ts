import {lstatSync} from 'node:fs'
import path from 'node:path'

import {WafersError} from '../errors.js'
import {readStoreFile} from '../host/files.js'
import {resolveInRoot} from './paths.js'

/** A user of the image, as its /etc/passwd has it. */
interface Account {
  gid: number
  home: string
  name: string
  uid: number
}

/**
 * How a RUN becomes its USER: by nspawn's `--user` (a user of the image), or by bare numbers, with
 * the supplementary groups the image's /etc/group gives user `name` when `listed`.
 */
export type RunAs = {gid: number; home: string; listed?: boolean; name: string; uid: number} | {name: string}

/**
 * The numeric owner `--chown=USER[:GROUP]` names, looked up in the image's /etc/passwd and
 * /etc/group (read inside `root` without following links out of it). A user alone takes its
 * primary group; a number the image does not know takes the same number as its group (as Docker).
 */
export function parseChown(root: string, spec: string | undefined): {gid: number; uid: number} {
  if (spec === undefined) return {gid: 0, uid: 0}
  const [user, group] = spec.split(':')
  const account = findUser(root, user, '--chown')
  const uid = account?.uid ?? Number(user)
  const gid =
    group === undefined || group === '' ? (/^\d+$/.test(user) ? uid : account?.gid) : findGroup(root, group, '--chown')
  return {gid: gid ?? uid, uid}
}

/**
 * How a RUN runs as `USER spec` (`NAME`, `UID`, `NAME:GROUP`, `UID:GID`) in the stack at `root`;
 * undefined for root. A user the image knows, with no group given, is nspawn's `--user` (its home,
 * groups and shell from the image) when the image has getent. Anything else is numbers, as Docker
 * runs it: a uid the image does not know gets group 0 and home `/`; a group given is the only group.
 */
export function runAs(root: string, spec: string | undefined): RunAs | undefined {
  if (spec === undefined || spec === '') return undefined
  const what = `USER ${spec}`
  const [user, group] = spec.split(':')
  const account = findUser(root, user, what)
  if (group === undefined || group === '') {
    if (account?.uid === 0) return undefined
    // nspawn looks the user up with the image's own getent, and makes the user's home when it is
    // missing (buildah does not): an image without getent (busybox, musl), or without that home,
    // gets the user's numbers from its /etc/passwd and the groups from its /etc/group instead.
    if (account !== undefined)
      return hasGetent(root) && hasHome(root, account.home) ? {name: account.name} : {...account, listed: true}
    if (Number(user) === 0) return undefined
    return {gid: 0, home: '/', name: user, uid: Number(user)}
  }

  const gid = findGroup(root, group, what)
  const uid = account?.uid ?? Number(user)
  if (uid === 0 && gid === 0) return undefined
  return {gid, home: account?.home ?? '/', name: account?.name ?? user, uid}
}

/** Whether `home` is there in the image (a link counts: nspawn would not make it). */
function hasHome(root: string, home: string): boolean {
  if (home === '/') return true
  const parent = resolveInRoot(root, path.posix.dirname(home))
  return lstatSync(path.join(parent, path.posix.basename(home)), {throwIfNoEntry: false}) !== undefined
}

/** Whether the image has a getent program, which nspawn's `--user` runs inside it. */
function hasGetent(root: string): boolean {
  return ['/usr/bin/getent', '/bin/getent'].some((file) =>
    lstatSync(resolveInRoot(root, file), {throwIfNoEntry: false})?.isFile(),
  )
}

/**
 * The image's account of `user` (a name, or a number it lists); undefined for a number it does not
 * list. A name it does not list is refused, naming `what` asked for it.
 */
function findUser(root: string, user: string, what: string): Account | undefined {
  const numeric = /^\d+$/.test(user)
  const row = readTable(root, '/etc/passwd').find((fields) => (numeric ? fields[2] === user : fields[0] === user))
  if (row === undefined) {
    if (numeric) return undefined
    throw new WafersError(`${what}: there is no user ${user} in the image's /etc/passwd.`)
  }

  if (!/^\d+$/.test(row[2] ?? '') || !/^\d+$/.test(row[3] ?? ''))
    throw new WafersError(`${what}: the image's /etc/passwd row of ${row[0]} has no numeric uid and gid.`)
  return {gid: Number(row[3]), home: row[5] || '/', name: row[0], uid: Number(row[2])}
}

/** The gid of `group` (a number, or a name the image's /etc/group lists); refuses a name it does not list. */
function findGroup(root: string, group: string, what: string): number {
  if (/^\d+$/.test(group)) return Number(group)
  const row = readTable(root, '/etc/group').find((fields) => fields[0] === group)
  if (!row) throw new WafersError(`${what}: there is no group ${group} in the image's /etc/group.`)
  if (!/^\d+$/.test(row[2] ?? ''))
    throw new WafersError(`${what}: the image's /etc/group row of ${group} has no numeric gid.`)
  return Number(row[2])
}

function readTable(root: string, file: string): string[][] {
  const text = readStoreFile(resolveInRoot(root, file), `the image's ${file}`) ?? ''
  return text
    .split('\n')
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => line.split(':'))
}
