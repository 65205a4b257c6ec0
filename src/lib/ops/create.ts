import {WafersError} from '../errors.js'
import {SeedPlan, checkSeedTarget, createTitle, seed} from '../seed/seed.js'
import {checkRoot} from '../host/system.js'
import type {Step} from '../steps.js'
import {findMachineId, traceAncestry} from '../store/ancestry.js'
import {checkName} from '../store/names.js'
import {Locations, WaferStore} from '../store/store.js'

/** What `create` did, as `--json` prints it. */
export interface CreateResult {
  /** The new wafer's `data` directory. */
  data: string
  name: string
  /** Its parent, or null for a base wafer. */
  parent: null | string
  /** The seeder that filled it, or null. */
  seeder: null | string
  /** The wafer names of its stack, top first. */
  wafers: string[]
}

/**
 * The steps that create wafer `name` (on `parent`, or as a base wafer filled by a seeder) without
 * stacking it, and the result they fill in. Every check runs before anything is created; a seeder
 * that fails leaves no wafer.
 */
export function createSteps(
  locations: Locations,
  name: string,
  parent?: string,
  plan?: SeedPlan,
): {result: CreateResult; steps: Step[]} {
  const store = new WaferStore(locations.wafers)
  const result: CreateResult = {data: '', name, parent: parent ?? null, seeder: plan?.entry.name ?? null, wafers: []}
  const check: Step = {
    async run() {
      checkName(name)
      checkRoot()
      if (parent !== undefined) checkName(parent, 'parent name')
      const exists = await store.exists(name)
      checkSeedTarget(plan, name, exists, parent)
      if (exists) throw new WafersError(`wafer ${name} already exists in ${store.root}.`)
      result.data = store.dataDir(name)
      result.wafers = await traceAncestry(store, name, parent)
      return parent === undefined ? `Checked the name ${name}` : `Traced ${result.wafers.join(' <- ')}`
    },
    title: `Check wafer ${name}`,
  }
  const create: Step = {
    async run(report) {
      await createWafer(store, name, parent, result.wafers.slice(1), plan, report)
    },
    title: createTitle(name, parent, plan),
  }
  return {result, steps: [check, create]}
}

/**
 * Creates wafer `name` on `parent` over the wafers `below` it (nearest first): its own machine id
 * when they have one, its parent's owner and mode, filled by the seeder of `plan` if any.
 */
export async function createWafer(
  store: WaferStore,
  name: string,
  parent: string | undefined,
  below: string[],
  plan: SeedPlan | undefined,
  report: (line: string) => void,
): Promise<void> {
  const layers = below.map((wafer) => store.dataDir(wafer))
  const fill = plan && ((data: string) => seed(plan, name, data, report))
  await store.create(name, parent, {fill, machineId: await findMachineId(layers), parentData: layers[0]})
}
