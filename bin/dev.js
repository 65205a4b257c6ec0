#!/usr/bin/env -S node --import tsx --no-warnings
import {execute} from '@oclif/core'

// The same fixed plugin location as bin/run.js.
process.env.WAFERS_DATA_DIR ||= '/usr/local/lib/wafers'

await execute({development: true, dir: import.meta.url})
