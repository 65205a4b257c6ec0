#!/usr/bin/env node
// Runs the mocha suite. As root it runs inside a private mount namespace (unshare -m), so the
// real overlays the tests mount never show up on, or leak into, the host.
import {spawnSync} from 'node:child_process'
import {readlinkSync} from 'node:fs'
import {fileURLToPath} from 'node:url'

const mocha = fileURLToPath(new URL('../node_modules/mocha/bin/mocha.js', import.meta.url))
// With no test files named it runs them all; `node test/run.js test/integration/x.integration.ts`
// runs just that one (a spec list in .mocharc would be added to any files named here).
const ALL = ['test/**/*.test.ts', 'test/integration/**/*.integration.ts']
const given = process.argv.slice(2)
const namesFiles = given.some((arg) => /\.(ts|js)$/.test(arg) && !arg.startsWith('-'))
const args = [mocha, ...given, ...(namesFiles ? [] : ALL)]
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
