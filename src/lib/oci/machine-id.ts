import {promises as fs} from 'node:fs'
import path from 'node:path'

import {WafersError, isErrno} from '../errors.js'
import {withUs} from '../host/run.js'
import {BLOCK, padded} from '../layer/tar/header.js'
import {isZero, parseHeader, parsePax} from '../layer/tar/reader.js'

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
 * emptied, everything else byte for byte, recompressed as packLayer compresses (PACK_COMPRESSOR), so
 * the same layer still gives the same bytes. Returns the new blob's digest and size and the diffID
 * of the new tar.
 */
export async function blankMachineId(
  input: string,
  output: string,
): Promise<{diffId: string; digest: string; size: number}> {
  const [{execa}, {PACK_COMPRESSOR}, {createGunzip}, {createReadStream}, {digestOf, sha256}] = await Promise.all([
    import('execa'),
    import('../layer/archive.js'),
    import('node:zlib'),
    import('node:fs'),
    import('../layer/digest.js'),
  ])
  const file = await fs.open(output, 'wx')
  const compressor = withUs(PACK_COMPRESSOR.file, PACK_COMPRESSOR.args)
  const pigz = execa(compressor.file, compressor.args, {
    buffer: {stderr: true, stdout: false},
    encoding: 'buffer',
    reject: false,
    stdin: 'pipe',
    stdout: 'pipe',
  })
  pigz.stdin.on('error', () => {})
  const tarHash = sha256()
  const blobHash = sha256()
  let size = 0
  const writing = (async () => {
    for await (const chunk of pigz.stdout as AsyncIterable<Buffer>) {
      blobHash.update(chunk)
      size += chunk.length
      await file.write(chunk)
    }
  })()
  writing.catch(() => {})
  const emit = async (part: Buffer): Promise<void> => {
    tarHash.update(part)
    if (!pigz.stdin.write(part)) await new Promise((resolve) => pigz.stdin.once('drain', resolve))
  }

  try {
    let pending: Buffer = Buffer.alloc(0)
    // Bytes of entry data still to come after a header, and whether they are passed on or dropped.
    let data = 0
    let dropping = false
    let ended = false
    // A pax header's data, kept to read its path and size records, which stand for the next entry's.
    let pax: Buffer[] | undefined
    let paxSize = 0
    let next: Map<string, Buffer> | undefined
    for await (const chunk of createReadStream(input).pipe(createGunzip()) as AsyncIterable<Buffer>) {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
      while (pending.length > 0) {
        if (ended || data > 0) {
          const take = ended ? pending.length : Math.min(data, pending.length)
          const part = pending.subarray(0, take)
          pax?.push(Buffer.from(part))
          if (!dropping) await emit(part)
          pending = pending.subarray(take)
          if (!ended) data -= take
          if (data === 0 && pax) {
            next = paxOf(Buffer.concat(pax).subarray(0, paxSize))
            pax = undefined
          }

          continue
        }

        if (pending.length < BLOCK) break
        const block = Buffer.from(pending.subarray(0, BLOCK))
        pending = pending.subarray(BLOCK)
        const header = isZero(block) ? undefined : parseHeader(block)
        if (typeof header === 'string') throw new WafersError(`a packed layer cannot be read again: ${header}.`)
        if (header === undefined) {
          // The zero blocks at the end, and whatever padding follows: passed on as they are.
          ended = true
          await emit(block)
          continue
        }

        const records = next
        next = undefined
        const name = (records?.get('path') ?? header.name).toString('latin1').replace(/^(\.\/)+|^\/+/, '')
        const entrySize = records?.has('size') ? Number(records.get('size')!.toString('latin1')) : header.size
        if (header.typeflag === 'x' || header.typeflag === 'g') pax = header.typeflag === 'x' ? [] : undefined
        paxSize = entrySize
        dropping =
          name === MACHINE_ID &&
          !records?.has('size') &&
          (header.typeflag === '0' || header.typeflag === '\0') &&
          entrySize > 0
        data = padded(entrySize)
        if (dropping) emptySize(block)
        await emit(block)
        if (data === 0 && pax) {
          next = paxOf(Buffer.alloc(0))
          pax = undefined
        }
      }
    }

    if (pending.length > 0 && !dropping) await emit(pending)
    pigz.stdin.end()
    await writing
    const result = await pigz
    if (result.exitCode !== 0) throw new WafersError(`compressing a layer failed: pigz exited with ${result.exitCode}.`)
    await file.sync()
  } catch (error) {
    pigz.kill()
    throw error
  } finally {
    await file.close()
  }

  return {diffId: digestOf(tarHash), digest: digestOf(blobHash), size}
}

/** The records of a pax header of a layer wafers packed; its own writer made it, so a fault is a bug. */
function paxOf(data: Buffer): Map<string, Buffer> {
  const records = parsePax(data)
  if (typeof records === 'string') throw new WafersError(`a packed layer cannot be read again: ${records}.`)
  return records
}

/** Sets the size field of a ustar header block to 0 and its checksum to match. */
function emptySize(block: Buffer): void {
  block.write('00000000000\0', 124, 'latin1')
  block.fill(0x20, 148, 156)
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += block[i]
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1')
}
