#!/usr/bin/env node
// Part of `npm run build`, after tsc and before `oclif manifest`: bundles the compiled dist/ in
// place with esbuild, so that starting wafers reads a few files instead of hundreds (@oclif/core
// alone is ~100 CommonJS modules, each resolved, read and compiled on every run).
//
// Every dist/**/*.js stays an entry point at its own path with its own exports, so oclif still
// finds commands (and hooks) through the manifest and package.json, and plugin authors still
// import 'wafers'. With splitting, code they share (@oclif/core, src/lib) lives once in
// dist/chunks/, so bin/run.js, a command and a hook use one copy of each module: one WafersError
// class, one oclif. Dynamic imports (execa, listr2) become chunks of their own, still loaded only
// by the commands that use them. The .d.ts files are tsc's, untouched.
import {build} from 'esbuild'
import {readFileSync, readdirSync} from 'node:fs'
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

await build({
  allowOverwrite: true,
  // Bundled CommonJS (most of oclif) calls require() and reads __dirname, which ES modules lack.
  banner: {
    js: [
      "import {createRequire as __wafersCreateRequire} from 'node:module';",
      "import {fileURLToPath as __wafersFileURLToPath} from 'node:url';",
      'const require = __wafersCreateRequire(import.meta.url);',
      'const __filename = __wafersFileURLToPath(import.meta.url);',
      "const __dirname = __wafersFileURLToPath(new URL('.', import.meta.url));",
    ].join(' '),
  },
  bundle: true,
  chunkNames: 'chunks/[name]-[hash]',
  entryPoints,
  // oclif requires typescript only to run .ts sources in development (bin/dev.js), never from dist.
  external: ['typescript'],
  format: 'esm',
  logLevel: 'warning',
  minifySyntax: true,
  minifyWhitespace: true,
  outbase: dist,
  outdir: dist,
  platform: 'node',
  plugins: [nativePackagesStayExternal],
  splitting: true,
  target: 'node20',
})
