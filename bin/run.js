#!/usr/bin/env node
import {execute} from '@oclif/core'

// Plugins live in one fixed place, whoever runs wafers: what `sudo wafers plugins install` adds,
// the next `sudo wafers` finds (oclif's default, ~/.local/share/wafers, depends on HOME).
// WAFERS_DATA_DIR overrides it.
process.env.WAFERS_DATA_DIR ||= '/usr/local/lib/wafers'

await execute({dir: import.meta.url})
