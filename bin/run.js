#!/usr/bin/env node
// Piped, an error or warning stays on one line so scripts can grep it; a terminal wraps it to fit.
if (!process.stderr.isTTY && !process.env.OCLIF_COLUMNS) process.env.OCLIF_COLUMNS = '100000'
// A terminal that reports 0 columns (a serial console, script(1) without a size) wraps at 80.
if (process.stderr.isTTY && !process.stderr.columns && !process.env.OCLIF_COLUMNS) process.env.OCLIF_COLUMNS = '80'
// oclif ends with process.exit(): make piped output blocking so that nothing written before is lost.
for (const stream of [process.stdout, process.stderr]) stream._handle?.setBlocking?.(true)
// Plugins live in one fixed place, whoever runs wafers: what `sudo wafers plugins install` adds,
// the next `sudo wafers` finds (oclif's default, ~/.local/share/wafers, depends on HOME).
// WAFERS_DATA_DIR overrides it.
process.env.WAFERS_DATA_DIR ||= '/usr/local/lib/wafers'
// oclif checks Node against its own engines (>=18, below wafers' >=20.17, which npm checks at
// install) on every start, loading semver to do so: 2% of the instructions of a command.
process.env.OCLIF_DISABLE_ENGINE_WARNING ??= '1'
// wafers' own code, oclif with it, is one file that dist/boot.js compiles with V8's code cache,
// kept by the install's owner (boot.js says how it is guarded). Node 22's enableCompileCache is
// left off: it saved nothing measurable for the rest (oclif's help plugin: 125 against 120 ms for
// `wafers --help` on Node 24), and the directories it makes follow the umask, which is not ours.

// oclif comes from the bundled build (see scripts/bundle.js), after the settings above are made.
const {execute, settings} = await import('../dist/main.js')
// Plugins run as they were built, linked ones too: root never compiles a plugin's TypeScript on
// the fly, and linked ESM plugins load without oclif's transpiling warning.
settings.enableAutoTranspile = false
await execute({dir: import.meta.url})
