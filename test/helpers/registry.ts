import {type ResultPromise, execa} from 'execa'
import {promises as fs} from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

import {closedPort} from './net.js'

/** A CNCF distribution registry (Debian's docker-registry) on 127.0.0.1, with its storage in a temp dir. */
export class Registry {
  private constructor(
    readonly dir: string,
    readonly port: number,
    private readonly child: ResultPromise,
    /** The self-signed certificate (PEM) it serves HTTPS with, when started with `tls`. */
    readonly certificate?: string,
  ) {}

  /** `127.0.0.1:PORT`, the registry host in image references. */
  get host(): string {
    return `127.0.0.1:${this.port}`
  }

  /**
   * Starts a registry on a free loopback port; with `users`, it wants htpasswd (bcrypt) logins;
   * with `tls`, it serves HTTPS with a fresh self-signed certificate for 127.0.0.1 (openssl).
   * Resolves once it answers on /v2/.
   */
  static async start(options: {tls?: boolean; users?: Record<string, string>} = {}): Promise<Registry> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-registry-'))
    const port = await closedPort()
    const lines = [
      'version: 0.1',
      'log:',
      '  level: error',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${path.join(dir, 'storage')}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: 127.0.0.1:${port}`,
    ]
    if (options.users) {
      const entries: string[] = []
      for (const [user, password] of Object.entries(options.users)) {
        entries.push((await execa('htpasswd', ['-Bbn', user, password])).stdout.trim())
      }

      await fs.writeFile(path.join(dir, 'htpasswd'), `${entries.join('\n')}\n`)
      lines.push('auth:', '  htpasswd:', '    realm: wafers-test', `    path: ${path.join(dir, 'htpasswd')}`)
    }

    let certificate: string | undefined
    if (options.tls) {
      const [cert, key] = [path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')]
      await execa('openssl', [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '2',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-keyout',
        key,
        '-out',
        cert,
      ])
      certificate = await fs.readFile(cert, 'utf8')
      lines.push('  tls:', `    certificate: ${cert}`, `    key: ${key}`)
    }

    const config = path.join(dir, 'config.yml')
    await fs.writeFile(config, `${lines.join('\n')}\n`)
    const child = execa('docker-registry', ['serve', config], {reject: false, stdin: 'ignore'})
    const registry = new Registry(dir, port, child, certificate)
    for (let i = 0; i < 100; i++) {
      if (await answers(port)) return registry
      if (child.exitCode !== null) break
      await new Promise((resolve) => {
        setTimeout(resolve, 100)
      })
    }

    await registry.stop()
    throw new Error(`docker-registry did not start on ${registry.host}: ${(await child).stderr}`)
  }

  /**
   * Uploads the image tagged `tag` in the OCI layout `layout` to `repository:tag` through the
   * distribution API itself, every blob and the manifest byte for byte (skopeo would recompress an
   * uncompressed layer on the way).
   */
  async pushLayout(layout: string, tag: string, repository: string): Promise<void> {
    const scheme = this.certificate ? 'https' : 'http'
    const base = `${scheme}://${this.host}/v2/${repository}`
    const blob = (digest: string) => fs.readFile(path.join(layout, 'blobs', 'sha256', digest.slice(7)))
    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8')) as {
      manifests: Array<{annotations?: Record<string, string>; digest: string; mediaType: string}>
    }
    const top = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)
    if (!top) throw new Error(`no tag ${tag} in ${layout}`)
    const raw = await blob(top.digest)
    const manifest = JSON.parse(raw.toString()) as {config: {digest: string}; layers: Array<{digest: string}>}
    for (const digest of [manifest.config.digest, ...manifest.layers.map((layer) => layer.digest)]) {
      const started = await this.request('POST', `${base}/blobs/uploads/`)
      if (started.status !== 202) throw new Error(`upload of ${digest} refused: ${started.status}`)
      const location = new URL(started.location!, `${scheme}://${this.host}`)
      location.searchParams.set('digest', digest)
      const put = await this.request('PUT', location.href, await blob(digest), 'application/octet-stream')
      if (put.status !== 201) throw new Error(`upload of ${digest} failed: ${put.status} ${put.body}`)
    }

    const put = await this.request('PUT', `${base}/manifests/${tag}`, raw, top.mediaType)
    if (put.status !== 201) throw new Error(`manifest upload failed: ${put.status} ${put.body}`)
  }

  /** One request to the registry, trusting its own certificate over HTTPS (fetch cannot be told one). */
  private request(
    method: string,
    url: string,
    body?: Buffer,
    type?: string,
  ): Promise<{body: string; location?: string; status: number}> {
    const client = url.startsWith('https:') ? https : http
    return new Promise((resolve, reject) => {
      const sent = client.request(
        url,
        {
          ...(this.certificate ? {ca: this.certificate} : {}),
          headers: type ? {'Content-Length': body?.length ?? 0, 'Content-Type': type} : {},
          method,
        },
        (response) => {
          const chunks: Buffer[] = []
          response.on('data', (chunk: Buffer) => chunks.push(chunk))
          response.on('end', () =>
            resolve({
              body: Buffer.concat(chunks).toString(),
              location: response.headers.location,
              status: response.statusCode ?? 0,
            }),
          )
          response.on('error', reject)
        },
      )
      sent.on('error', reject)
      sent.end(body)
    })
  }

  /** Stops the registry and deletes its storage. */
  async stop(): Promise<void> {
    this.child.kill('SIGTERM')
    await this.child
    await fs.rm(this.dir, {force: true, recursive: true})
  }
}

async function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/** Starts one real registry for the calling `describe` (with `options`) and stops it after; `use` gets it. */
export function useRegistry(use: (registry: Registry) => void, options: Parameters<typeof Registry.start>[0] = {}): void {
  let registry: Registry | undefined
  before(async function () {
    registry = await Registry.start(options)
    use(registry)
  })

  after(async function () {
    await registry?.stop()
  })
}
