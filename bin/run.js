#!/usr/bin/env node
// Piped, an error or warning stays on one line so scripts can grep it; a terminal wraps it to fit.
if (!process.stderr.isTTY && !process.env.OCLIF_COLUMNS) process.env.OCLIF_COLUMNS = '100000'
// oclif ends with process.exit(): make piped output blocking so that nothing written before is lost.
for (const stream of [process.stdout, process.stderr]) stream._handle?.setBlocking?.(true)

const {execute} = await import('@oclif/core')
await execute({dir: import.meta.url})
