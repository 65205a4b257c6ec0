#!/usr/bin/env node
// Runs the mocha suite. As root it runs inside a private mount namespace (unshare -m), so the
// real overlays the tests mount never show up on, or leak into, the host.
import {spawnSync} from 'node:child_process'
import {readlinkSync} from 'node:fs'
import {fileURLToPath} from 'node:url'

const mocha = fileURLToPath(new URL('../node_modules/mocha/bin/mocha.js', import.meta.url))
const args = [mocha, ...process.argv.slice(2)]
const asRoot = process.getuid?.() === 0
// The tests compare their own mount namespace with this one to be sure they are not on the host's.
process.env.WAFERS_TEST_HOST_MOUNT_NS = readlinkSync('/proc/self/ns/mnt')
const result = asRoot
  ? spawnSync('unshare', ['-m', '--propagation', 'private', '--', process.execPath, ...args], {stdio: 'inherit'})
  : spawnSync(process.execPath, args, {stdio: 'inherit'})
if (result.error) {
  console.error(`cannot run the tests: ${result.error.message}`)
  process.exit(1)
}

process.exit(result.status ?? 1)
