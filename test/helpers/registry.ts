import {type ResultPromise, execa} from 'execa'
import {promises as fs} from 'node:fs'
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
  ) {}

  /** `127.0.0.1:PORT`, the registry host in image references. */
  get host(): string {
    return `127.0.0.1:${this.port}`
  }

  /**
   * Starts a registry on a free loopback port; with `users`, it wants htpasswd (bcrypt) logins.
   * Resolves once it answers on /v2/.
   */
  static async start(options: {users?: Record<string, string>} = {}): Promise<Registry> {
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
        // eslint-disable-next-line no-await-in-loop
        entries.push((await execa('htpasswd', ['-Bbn', user, password])).stdout.trim())
      }

      await fs.writeFile(path.join(dir, 'htpasswd'), `${entries.join('\n')}\n`)
      lines.push('auth:', '  htpasswd:', '    realm: wafers-test', `    path: ${path.join(dir, 'htpasswd')}`)
    }

    const config = path.join(dir, 'config.yml')
    await fs.writeFile(config, `${lines.join('\n')}\n`)
    const child = execa('docker-registry', ['serve', config], {reject: false, stdin: 'ignore'})
    const registry = new Registry(dir, port, child)
    for (let i = 0; i < 100; i++) {
      // eslint-disable-next-line no-await-in-loop
      if (await answers(port)) return registry
      if (child.exitCode !== null) break
      // eslint-disable-next-line no-await-in-loop
      await new Promise((resolve) => {
        setTimeout(resolve, 100)
      })
    }

    await registry.stop()
    throw new Error(`docker-registry did not start on ${registry.host}: ${(await child).stderr}`)
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
