// What plugin authors import from 'wafers': the domain, free of oclif, and the hook types.
import type {Hook} from '@oclif/core'

import type {WafersHooks} from './lib/hooks.js'

export {MAX_LOWER_LAYERS, MAX_STACK_DEPTH, findMachineId, traceAncestry} from './lib/store/ancestry.js'
export {type Change, type DiffEntry, diffWafer} from './lib/ops/diff.js'
export {WafersError} from './lib/errors.js'
export {MAX_STORE_FILE, readStoreFile, writeFileAtomic} from './lib/host/files.js'
export {type Inventory, type WaferInfo, readInventory} from './lib/ops/inventory.js'
export {withLock} from './lib/store/lock.js'
export {type MountEntry, type OverlayLayers, mountAt, overlayLayers, readMountTable} from './lib/host/mounts.js'
export {
  type BuildMeta,
  type HistoryEntry,
  type ImageConfig,
  type ImageMeta,
  type LayerMeta,
  META_FILE,
  type WaferMeta,
  readMeta,
  writeMeta,
} from './lib/store/meta.js'
export {MAX_NAME_LENGTH, NAME_RULE_TEXT, checkName, isValidName} from './lib/store/names.js'
export {
  type StackOptions,
  type StackResult,
  type UnstackOptions,
  type UnstackResult,
  stackSteps,
  unstack,
} from './lib/ops/stack.js'
export type {Step} from './lib/steps.js'
export {DEFAULT_STACKS, DEFAULT_WAFERS, type Locations, WaferStore, locationsFromEnv} from './lib/store/store.js'
export {type LiveStack, liveStacks, stackConflicts} from './lib/mount/usage.js'
export type {
  HookOutcome,
  HookRunner,
  PruneCandidate,
  SeedContext,
  SeedRunOptions,
  SeedRunResult,
  Seeder,
  StackHookOptions,
  UnstackHookOptions,
  WafersHookEvent,
  WafersHooks,
} from './lib/hooks.js'
export {type SeederEntry} from './lib/seed/seed.js'

// The events plugins implement, typed for oclif: `const hook: Hook<'wafers:seeders'> = ...` in a
// plugin gets the options and return type below.
declare module '@oclif/core/hooks' {
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type -- declaration merging: oclif's Hooks gains wafers' events
  interface Hooks extends WafersHooks {}
}

/** A plugin's `wafers:seeders` handler: returns the seeders it offers. */
export type SeedersHook = Hook<'wafers:seeders'>
/** A plugin's `wafers:prestack` handler: a throw refuses the stack, nothing is mounted. */
export type PrestackHook = Hook<'wafers:prestack'>
/** A plugin's `wafers:poststack` handler: a throw fails the command and unmounts the stack again. */
export type PoststackHook = Hook<'wafers:poststack'>
/** A plugin's `wafers:preunstack` handler: a throw refuses the unstack, the stack stays mounted. */
export type PreunstackHook = Hook<'wafers:preunstack'>
/** A plugin's `wafers:postunstack` handler: a throw fails the command and mounts the stack again. */
export type PostunstackHook = Hook<'wafers:postunstack'>
/** A plugin's `wafers:prune` handler: returns what of its own (caches) `wafers prune` may delete. */
export type PruneHook = Hook<'wafers:prune'>
