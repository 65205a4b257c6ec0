#!/usr/bin/env node
import {execute, settings} from '@oclif/core'

// Plugins live in one fixed place, whoever runs wafers: what `sudo wafers plugins install` adds,
// the next `sudo wafers` finds (oclif's default, ~/.local/share/wafers, depends on HOME).
// WAFERS_DATA_DIR overrides it.
process.env.WAFERS_DATA_DIR ||= '/usr/local/lib/wafers'
// Plugins run as they were built, linked ones too: root never compiles a plugin's TypeScript on
// the fly, and linked ESM plugins load without oclif's transpiling warning.
settings.enableAutoTranspile = false

await execute({dir: import.meta.url})
