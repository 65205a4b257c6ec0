// What bin/run.js starts: oclif itself, taken from here rather than from @oclif/core so that the
// bundled build (scripts/bundle.js) runs the same copy of oclif as the commands it loads.
export {execute, settings} from '@oclif/core'
