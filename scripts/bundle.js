#!/usr/bin/env node
// Part of `npm run build`, after tsc and before `oclif manifest`: bundles the compiled dist/ in
// place with esbuild, so that starting wafers reads and compiles one file instead of hundreds
// (@oclif/core alone is ~100 CommonJS modules, each resolved, read and compiled on every run).
//
// All of tsc's dist/**/*.js, with what they import (@oclif/core, execa, listr2), becomes one
// CommonJS file, dist/core.cjs, in which every module is initialised only when first imported: a
// command runs the code it uses and no more. Every dist/**/*.js then stays at its own path with its
// own exports, as a few lines that take them from the core (through dist/boot.js, which loads the
// core once per process, with V8's code cache: see scripts/boot.js). So oclif still finds commands
// and hooks through the manifest and package.json, plugin authors still import 'wafers', and
// bin/run.js, a command and a hook share one copy of each module: one WafersError class, one oclif.
// The .d.ts files are tsc's, untouched.
import {build} from 'esbuild'
import {readFileSync, readdirSync, writeFileSync} from 'node:fs'
import {builtinModules} from 'node:module'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const dist = fileURLToPath(new URL('../dist', import.meta.url))
const entryPoints = readdirSync(dist, {recursive: true})
  .filter((file) => file.endsWith('.js'))
  .map((file) => path.join(dist, file))

// Bundled, a module's code may land in dist/chunks/, so import.meta.url would name the chunk, not
// the module: paths built from it would quietly point one directory off. Refuse instead.
const located = entryPoints.filter((file) => /\bimport\.meta\b/.test(readFileSync(file, 'utf8')))
if (located.length > 0) {
  console.error(
    `cannot bundle: ${located.map((file) => path.relative(dist, file)).join(', ')} use import.meta, which would ` +
      "point into dist/chunks/ once bundled. Find files from the package root instead (a command's this.config.root).",
  )
  process.exit(1)
}

/**
 * Packages with native code (a .node binary, found at run time next to their own files) cannot be
 * bundled: they stay in node_modules and are imported from there, like any external package.
 */
const nativePackagesStayExternal = {
  name: 'native-packages-stay-external',
  setup(builder) {
    builder.onResolve({filter: /^[^./]/}, (args) => {
      if (args.kind === 'entry-point') return
      const name = args.path
        .split('/')
        .slice(0, args.path.startsWith('@') ? 2 : 1)
        .join('/')
      if (name.startsWith('node:') || builtinModules.includes(name)) return
      const pjson = packageJson(name, args.resolveDir)
      if (pjson && isNative(pjson)) return {external: true, path: args.path}
    })
  },
}

/**
 * The core is compiled through vm.Script with a code cache (scripts/boot.js), and on Node 20 a
 * function that comes from a code cache has lost its module loader: a dynamic import() in it
 * throws. So no import() is left in the core. Those of bundled modules become calls of their lazy
 * initialisers and those of Node's modules and external packages (CommonJS) become require()
 * (`supported` below); the few that import a file named at run time (oclif loading a command, a
 * hook or a plugin, which may be ES modules) call `__wafersImport`, which boot.js hands the core: an
 * import() of its own, from an ES module.
 */
const NAMED_AT_RUN_TIME = /(?<![\w$.])import\s*\((?!\s*["'`)])/g

/**
 * Edits of other packages' code, each a measured cost of every start, each checked: a build whose
 * packages no longer hold the text it replaces fails, so that an update is looked at, never
 * silently left slower or half-edited.
 */
const EDITS = [
  {
    // oclif sorts each plugin's commands with localeCompare, and the first localeCompare of a
    // process loads ICU's collation data: 7 to 17 ms of every start, depending on the locale (10 ms,
    // a tenth of `wafers unstack`, under C.UTF-8). The ids are ASCII, the order is only oclif's own
    // (help and the readme sort again, by code point), so a comparison of code points does as well.
    file: '@oclif/core/lib/config/plugin.js',
    from: '.sort((a, b) => a.id.localeCompare(b.id));',
    to: '.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));',
  },
]
const edited = new Set()

const editsAndImports = {
  name: 'edits-and-imports-from-boot',
  setup(builder) {
    builder.onLoad({filter: /\.[cm]?js$/}, (args) => {
      let contents = readFileSync(args.path, 'utf8')
      let changed = false
      const where = args.path.split(path.sep).join('/')
      for (const edit of EDITS.filter(({file}) => where.endsWith(`/node_modules/${file}`))) {
        const parts = contents.split(edit.from)
        if (parts.length !== 2) return {errors: [{text: `${edit.file} no longer holds exactly one: ${edit.from}`}]}
        contents = parts.join(edit.to)
        edited.add(edit)
        changed = true
      }

      if (NAMED_AT_RUN_TIME.test(contents)) {
        NAMED_AT_RUN_TIME.lastIndex = 0
        contents = contents.replaceAll(NAMED_AT_RUN_TIME, '__wafersImport(')
        changed = true
      }

      return changed ? {contents, loader: 'js'} : undefined
    })
  },
}

function packageJson(name, from) {
  for (let dir = from; ; dir = path.dirname(dir)) {
    try {
      return JSON.parse(readFileSync(path.join(dir, 'node_modules', name, 'package.json'), 'utf8'))
    } catch {
      if (dir === path.dirname(dir)) return undefined
    }
  }
}

function isNative(pjson) {
  const loaders = ['bindings', 'node-gyp-build', 'node-pre-gyp', '@mapbox/node-pre-gyp', 'prebuild-install']
  return Boolean(pjson.napi || pjson.gypfile || pjson.binary || loaders.some((loader) => pjson.dependencies?.[loader]))
}

const modules = entryPoints.map((file) => path.relative(dist, file).split(path.sep).join('/'))

// The names each module exports, as esbuild reads tsc's output (no module is run to learn them).
const scanned = await build({
  bundle: false,
  entryPoints,
  format: 'esm',
  logLevel: 'warning',
  metafile: true,
  outbase: dist,
  outdir: dist,
  platform: 'node',
  write: false,
})
const exportsOf = new Map()
for (const output of Object.values(scanned.metafile.outputs)) {
  if (output.entryPoint)
    exportsOf.set(path.relative(dist, path.resolve(output.entryPoint)).split(path.sep).join('/'), output.exports)
}

// The core: an object of one loader per module. A require() of a bundled ES module becomes a call
// of its lazy initialiser, so nothing runs before a module is first asked for, and the modules'
// files take their exports at once, with no top-level await (so that Node's require() of an ES
// module, 20.19 and later, still loads 'wafers').
await build({
  bundle: true,
  // oclif requires typescript only to run .ts sources in development (bin/dev.js), never from dist.
  external: ['typescript'],
  format: 'cjs',
  logLevel: 'warning',
  minifySyntax: true,
  minifyWhitespace: true,
  outfile: path.join(dist, 'core.cjs'),
  platform: 'node',
  plugins: [nativePackagesStayExternal, editsAndImports],
  stdin: {
    contents: `module.exports = {\n${modules.map((name) => `  ${JSON.stringify(name)}: () => require(${JSON.stringify(`./${name}`)}),`).join('\n')}\n}\n`,
    loader: 'js',
    resolveDir: dist,
    sourcefile: 'core-modules.js',
  },
  supported: {'dynamic-import': false},
  target: 'node20',
})

const unused = EDITS.filter((edit) => !edited.has(edit))
if (unused.length > 0) {
  console.error(`cannot bundle: ${unused.map((edit) => edit.file).join(', ')} not bundled, so not edited; see EDITS.`)
  process.exit(1)
}

// A dynamic import() left in the core would fail on Node 20 once the core comes from the cache.
const core = readFileSync(path.join(dist, 'core.cjs'), 'utf8')
const leftImport = /(?<![\w$.])import\s*\((?!\))/.exec(core)
if (leftImport) {
  console.error(
    `cannot bundle: dist/core.cjs still calls import() (${core.slice(leftImport.index, leftImport.index + 60)}...); see editsAndImports.`,
  )
  process.exit(1)
}

// Each module's file: its exports, taken from the core.
for (const name of modules) {
  const names = exportsOf.get(name)
  if (names === undefined) {
    console.error(`cannot bundle: esbuild read no exports of ${name}`)
    process.exit(1)
  }

  const boot = `${'../'.repeat(name.split('/').length - 1) || './'}boot.js`
  const named = names.filter((exported) => exported !== 'default')
  const lines = [
    '// Generated by scripts/bundle.js: the code of this module is in core.cjs (see boot.js).',
    `import {load} from ${JSON.stringify(boot)}`,
    `const module = load(${JSON.stringify(name)})`,
    ...(names.includes('default') ? ['export default module.default'] : []),
    ...(named.length > 0 ? [`export const {${named.join(', ')}} = module`] : []),
    '',
  ]
  writeFileSync(path.join(dist, name), lines.join('\n'))
}

// The loader, told which commands there are: it keeps a code cache per command, since each
// compiles its own share of the core.
const commands = modules.filter((name) => /^commands\/[^/]+\.js$/.test(name)).map((name) => name.slice(9, -3))
const template = readFileSync(fileURLToPath(new URL('boot.js', import.meta.url)), 'utf8')
const boot = template.replace('const COMMANDS = []', `const COMMANDS = ${JSON.stringify(commands)}`)
if (boot === template) {
  console.error('cannot bundle: scripts/boot.js no longer has the COMMANDS line this script fills in')
  process.exit(1)
}

writeFileSync(path.join(dist, 'boot.js'), boot)
