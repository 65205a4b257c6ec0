/**
 * Step claims: how two builds of one store never make the same step at once (the second waits,
 * then finds it in the cache), without a lock file or a process per step.
 */
import {randomBytes} from 'node:crypto'
import {lstatSync, readdirSync, readlinkSync, renameSync, symlinkSync, unlinkSync} from 'node:fs'
import path from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {WafersError, asWafersError, isErrno} from '../errors.js'
import {stageHeld} from '../store/staging.js'

/**
 * How the names of step claims begin: `$WAFERS/.step-KEY`. A name that starts with a dot is no
 * wafer name, so `wafers list`, `tree` and the stage sweeper (which takes only `.create-*`) pass it by.
 */
const STEP_PREFIX = '.step-'

/** What a claim points at: a build's staging directory, directly in the store. */
const CLAIMANT = /^\.create-[\w.-]+$/

/** How often a waiting build looks again, and how many looks between asking whether the claimant lives. */
const POLL_MS = 100
const LIVENESS_EVERY = 10

/** A held step claim; release() removes it and lets the next build in. */
export interface StepClaim {
  release(): void
}

/**
 * Claims the step with cache key `key` in store `root` for the build whose staging directory (a
 * `.create-*` entry of the store, locked as long as that build lives) is named `stage`, so that two
 * builds never make the same step at once: the second waits (calling `onWait` once) until the first
 * is done, and then finds the step in the cache.
 *
 * The claim is a symlink `.step-KEY` -> the claimant's stage name, made with symlink(2), which
 * fails when the name is taken: claiming costs no lock and no process. The link is only ever read,
 * never followed; the claimant lives while its stage is locked (flock: the kernel's word, in any
 * PID namespace), asked only while waiting. A claim whose claimant died is taken over. `signal`
 * (Ctrl-C) ends a wait with an error saying nothing was done. Two builds taking over the same dead
 * claim at the same instant may both make the step: the second to finish then finds the wafer made
 * and takes it (see makeStep), so that costs time, never a wrong result.
 */
export async function claimStep(
  root: string,
  key: string,
  stage: string,
  onWait: () => void,
  signal?: AbortSignal,
): Promise<StepClaim> {
  const claim = path.join(root, `${STEP_PREFIX}${key.slice(0, 40)}`)
  const held: StepClaim = {
    release() {
      try {
        if (readlinkSync(claim) === stage) unlinkSync(claim)
      } catch {
        // Gone already, or not a link: nothing of ours to remove.
      }
    },
  }
  let waited = false
  for (let looks = 0; ; looks++) {
    try {
      symlinkSync(stage, claim)
      return held
    } catch (error) {
      if (!isErrno(error, 'EEXIST')) throw asWafersError(error)
    }

    const holder = claimantOf(claim)
    if (holder === stage) return held
    if (holder !== undefined && (looks % LIVENESS_EVERY !== 0 || (await stageHeld(root, holder)))) {
      if (!waited) onWait()
      waited = true
      if (signal?.aborted) throw new WafersError('interrupted while waiting for another build.', {exit: 130})
      await sleep(POLL_MS)
      if (signal?.aborted) throw new WafersError('interrupted while waiting for another build.', {exit: 130})
      continue
    }

    // Its claimant is gone (killed): take the claim over in one rename, then look whose it is.
    if (holder !== undefined) {
      const mine = `${claim}.${randomBytes(6).toString('hex')}`
      try {
        symlinkSync(stage, mine)
      } catch (error) {
        throw asWafersError(error)
      }

      try {
        if (claimantOf(claim) === holder) renameSync(mine, claim)
      } finally {
        try {
          unlinkSync(mine)
        } catch {
          // Renamed into place.
        }
      }
    }
  }
}

/**
 * The stage a claim names; undefined when the claim vanished meanwhile. Anything but a symlink to a
 * `.create-*` name (something else put there) is refused, never followed or opened.
 */
function claimantOf(claim: string): string | undefined {
  let target: string
  try {
    target = readlinkSync(claim)
  } catch (error) {
    if (isErrno(error, 'ENOENT')) return undefined
    if (!isErrno(error, 'EINVAL')) throw error
    target = ''
  }

  if (CLAIMANT.test(target)) return target
  throw new WafersError(
    `${claim}, the claim of a build step, is not a link to a build's staging directory; wafers neither follows nor opens it.`,
    {suggestions: [`Remove it (rm ${claim}) and build again.`]},
  )
}

/**
 * Removes step claims whose claimant's stage is gone (a build killed before it could remove its
 * claim, its stage swept since), so that they never pile up in the store. Call it after the sweep.
 */
export function removeAbandonedClaims(root: string): void {
  let entries: string[]
  try {
    entries = readdirSync(root).filter((name) => name.startsWith(STEP_PREFIX))
  } catch {
    return
  }

  for (const entry of entries) {
    const claim = path.join(root, entry)
    try {
      const target = readlinkSync(claim)
      if (CLAIMANT.test(target) && lstatSync(path.join(root, target), {throwIfNoEntry: false}) === undefined) {
        unlinkSync(claim)
      }
    } catch {
      // Not a link (not ours), or gone: left alone.
    }
  }
}
