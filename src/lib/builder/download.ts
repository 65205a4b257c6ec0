/**
 * ADD of a URL: the download, into a file of wafers' own, with a size limit and time-outs, and the
 * mtime the server gives it (Last-Modified), as buildah keeps it.
 */
import {createHash} from 'node:crypto'
import {createWriteStream} from 'node:fs'
import {finished} from 'node:stream/promises'

import {WafersError} from '../errors.js'

/** The largest file ADD downloads. */
export const MAX_DOWNLOAD = 8 * 1024 * 1024 * 1024
/** How long the server may send nothing (before the headers, or between two chunks). */
const IDLE_MS = 60_000

/** What a download gave: the file's content digest and the mtime its server gave (undefined if none). */
export interface Downloaded {
  mtime?: Date
  sha256: string
}

/**
 * Downloads `url` (http or https) into `file`, a new file; refuses, in one sentence naming `what`,
 * a failed request, a non-2xx answer, a file over MAX_DOWNLOAD bytes and a server silent for a minute.
 */
export async function download(url: string, file: string, what: string, signal?: AbortSignal): Promise<Downloaded> {
  const idle = new AbortController()
  let timer = setTimeout(() => idle.abort(), IDLE_MS)
  const poke = () => {
    clearTimeout(timer)
    timer = setTimeout(() => idle.abort(), IDLE_MS)
  }

  const abort = signal ? AbortSignal.any([signal, idle.signal]) : idle.signal
  const fail = (why: string) => new WafersError(`${what}: ${url} cannot be downloaded: ${why}.`)
  try {
    let response: Response
    try {
      response = await fetch(url, {redirect: 'follow', signal: abort})
    } catch (error) {
      if (signal?.aborted) throw error
      if (idle.signal.aborted) throw fail('the server sent nothing for a minute')
      const cause = (error as {cause?: {code?: string; message?: string}}).cause
      throw fail(cause?.code ?? cause?.message ?? String((error as Error).message))
    }

    if (!response.ok) throw fail(`the server answered ${response.status} ${response.statusText}`.trim())
    const length = Number(response.headers.get('content-length') ?? 0)
    if (length > MAX_DOWNLOAD) throw fail(`it is ${length} bytes, more than ADD takes (${MAX_DOWNLOAD})`)
    const hash = createHash('sha256')
    const out = createWriteStream(file, {flags: 'wx', mode: 0o600})
    let size = 0
    try {
      for await (const chunk of response.body ?? []) {
        poke()
        size += (chunk as Uint8Array).length
        if (size > MAX_DOWNLOAD) throw fail(`it is more than ADD takes (${MAX_DOWNLOAD} bytes)`)
        hash.update(chunk as Uint8Array)
        if (!out.write(chunk)) await new Promise<void>((resolve) => out.once('drain', () => resolve()))
      }
    } catch (error) {
      if (error instanceof WafersError || signal?.aborted) throw error
      throw fail(idle.signal.aborted ? 'the server sent nothing for a minute' : String((error as Error).message))
    } finally {
      out.end()
      await finished(out).catch(() => {})
    }

    const modified = response.headers.get('last-modified')
    const mtime = modified ? new Date(modified) : undefined
    return {mtime: mtime && !Number.isNaN(mtime.getTime()) ? mtime : undefined, sha256: hash.digest('hex')}
  } finally {
    clearTimeout(timer)
  }
}
