// What plugin authors import from 'wafers': the domain, free of oclif.
export {MAX_LOWER_LAYERS, MAX_STACK_DEPTH, findMachineId, traceAncestry} from './lib/ancestry.js'
export {WafersError} from './lib/errors.js'
export {type MountEntry, type OverlayLayers, mountAt, overlayLayers, readMountTable} from './lib/mounts.js'
export {MAX_NAME_LENGTH, NAME_RULE_TEXT, checkName, isValidName} from './lib/names.js'
export {type StackResult, type UnstackResult, stackSteps, unstack} from './lib/stack.js'
export type {Step} from './lib/steps.js'
export {DEFAULT_STACKS, DEFAULT_WAFERS, type Locations, WaferStore, locationsFromEnv} from './lib/store.js'
