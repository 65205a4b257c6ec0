import {createHash} from 'node:crypto'
import {promises as fs} from 'node:fs'
import http from 'node:http'
import type net from 'node:net'
import path from 'node:path'

/**
 * How the fake registry misbehaves:
 * - `silent`: takes every connection and never answers;
 * - `trickle`: answers manifests and blobs a byte a second;
 * - `endless`: sends layer `layer` (0-based) as an endless stream of zeros;
 * - `corrupt`: sends layer `layer` with its bytes changed (same size, another digest);
 * - `huge-manifest`: sends an endless manifest;
 * - `slow-blob`: sends layer blobs at about 8 KiB a second (a download that takes a while);
 * - `drip`: sends layer blobs at 512 bytes a second (clear of the idle bound, and days per layer);
 * - `honest`: serves the image as it is.
 */
export type Misbehaviour =
  'corrupt' | 'drip' | 'endless' | 'honest' | 'huge-manifest' | 'silent' | 'slow-blob' | 'trickle'

/**
 * A registry written for the test in Node, on 127.0.0.1, serving the image tagged `tag` in the
 * OCI layout `layout` under any repository name, misbehaving as told. Plain HTTP: pull it with
 * --tls-verify=false.
 */
export class FakeRegistry {
  /** Requests seen, as `METHOD PATH`. */
  readonly requests: string[] = []
  private readonly sockets = new Set<net.Socket>()

  private constructor(
    private readonly server: http.Server,
    readonly port: number,
  ) {}

  get host(): string {
    return `127.0.0.1:${this.port}`
  }

  static async start(
    layout: string,
    tag: string,
    how: Misbehaviour,
    options: {layer?: number} = {},
  ): Promise<FakeRegistry> {
    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8')) as {
      manifests: Array<{annotations?: Record<string, string>; digest: string; mediaType: string}>
    }
    const top = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)
    if (!top) throw new Error(`no tag ${tag} in ${layout}`)
    const blob = (digest: string) => fs.readFile(path.join(layout, 'blobs', 'sha256', digest.slice(7)))
    const manifest = JSON.parse((await blob(top.digest)).toString()) as {layers: Array<{digest: string}>}
    const target = manifest.layers[options.layer ?? 0]?.digest
    let registry: FakeRegistry | undefined
    const server = http.createServer((request, response) => {
      registry?.requests.push(`${request.method} ${request.url}`)
      void answer(request, response).catch(() => response.destroy())
    })

    async function answer(request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
      const url = request.url ?? ''
      if (how === 'silent') return
      if (url === '/v2/' || url === '/v2') {
        response.writeHead(200, {'Content-Type': 'application/json', 'Docker-Distribution-API-Version': 'registry/2.0'})
        response.end('{}')
        return
      }

      const manifestMatch = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(url)
      if (manifestMatch) {
        const reference = decodeURIComponent(manifestMatch[2])
        const digest = reference === tag ? top!.digest : reference
        const bytes = await blob(digest).catch(() => undefined)
        if (!bytes || !digest.startsWith('sha256:')) {
          response.writeHead(404, {'Content-Type': 'application/json'})
          response.end(JSON.stringify({errors: [{code: 'MANIFEST_UNKNOWN', message: 'manifest unknown'}]}))
          return
        }

        const mediaType = (JSON.parse(bytes.toString()) as {mediaType?: string}).mediaType ?? top!.mediaType
        if (how === 'huge-manifest') {
          response.writeHead(200, {'Content-Type': mediaType})
          await endless(response, Buffer.alloc(64 * 1024, 0x20))
          return
        }

        const headers = {
          'Content-Length': String(bytes.length),
          'Content-Type': mediaType,
          'Docker-Content-Digest': digest,
        }
        response.writeHead(200, headers)
        if (request.method === 'HEAD') {
          response.end()
          return
        }

        await send(response, bytes, how === 'trickle' ? 1 : 0)
        return
      }

      const blobMatch = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url)
      if (blobMatch) {
        const digest = blobMatch[2]
        const bytes = await blob(digest).catch(() => undefined)
        if (!bytes) {
          response.writeHead(404, {'Content-Type': 'application/json'})
          response.end(JSON.stringify({errors: [{code: 'BLOB_UNKNOWN', message: 'blob unknown'}]}))
          return
        }

        const isLayer = manifest.layers.some((layer) => layer.digest === digest)
        if (how === 'endless' && digest === target) {
          response.writeHead(200, {'Content-Type': 'application/octet-stream', 'Docker-Content-Digest': digest})
          await endless(response, Buffer.alloc(256 * 1024))
          return
        }

        let body = bytes
        if (how === 'corrupt' && digest === target) {
          body = Buffer.from(bytes)
          body[body.length - 1] ^= 0xff
        }

        response.writeHead(200, {
          'Content-Length': String(body.length),
          'Content-Type': 'application/octet-stream',
          'Docker-Content-Digest': digest,
        })
        if (request.method === 'HEAD') {
          response.end()
          return
        }

        const layerRate = {drip: 512, 'slow-blob': 8 * 1024}[how as string] ?? 0
        const rate = how === 'trickle' ? 1 : isLayer ? layerRate : 0
        await send(response, body, rate)
        return
      }

      response.writeHead(404)
      response.end()
    }

    server.on('connection', (socket) => {
      registry?.sockets.add(socket)
      socket.on('close', () => registry?.sockets.delete(socket))
    })
    await new Promise<void>((resolve) => {
      server.listen(0, '127.0.0.1', resolve)
    })
    registry = new FakeRegistry(server, (server.address() as net.AddressInfo).port)
    return registry
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy()
    await new Promise((resolve) => {
      this.server.close(resolve)
    })
  }
}

/** Writes `bytes` to `response`, at most `rate` bytes a second (0: at once). */
async function send(response: http.ServerResponse, bytes: Buffer, rate: number): Promise<void> {
  if (rate === 0) {
    response.end(bytes)
    return
  }

  const chunk = Math.max(1, Math.floor(rate / 4))
  for (let at = 0; at < bytes.length && !response.destroyed; at += chunk) {
    response.write(bytes.subarray(at, at + chunk))
    await new Promise((resolve) => {
      setTimeout(resolve, chunk === 1 ? 1000 : 250)
    })
  }

  response.end()
}

/** Writes `chunk` to `response` until the other side goes away. */
async function endless(response: http.ServerResponse, chunk: Buffer): Promise<void> {
  while (!response.destroyed) {
    if (!response.write(chunk)) {
      await new Promise((resolve) => {
        response.once('drain', resolve)
        response.once('close', resolve)
      })
    }
  }
}

/** The sha256 digest of `bytes`, as registries write it. */
export function sha256(bytes: Buffer | string): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}
