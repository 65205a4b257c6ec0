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
import {readdirSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const dist = fileURLToPath(new URL('../dist', import.meta.url))
const entryPoints = readdirSync(dist, {recursive: true})
  .filter((file) => file.endsWith('.js'))
  .map((file) => path.join(dist, file))

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
  splitting: true,
  target: 'node20',
})
