import {readMeta} from '../store/meta.js'
import {parseReference, defaultName} from '../oci/reference.js'
import {pullSteps} from '../oci/pull.js'
import type {RegistryOptions} from '../oci/skopeo.js'
import type {Locations} from '../store/store.js'
import {WaferStore} from '../store/store.js'

/**
 * The wafer holding image `text` (any reference `wafers pull` takes), pulled into the wafer
 * `wafers pull REF` would make unless that wafer already holds an image from the same reference.
 * Pull's steps run here, their progress going to `report`.
 */
export async function pullImage(
  locations: Locations,
  text: string,
  report: (line: string) => void,
  signal?: AbortSignal,
  registry: RegistryOptions = {tlsVerify: true},
): Promise<{pulled: boolean; wafer: string}> {
  const ref = parseReference(text)
  const name = defaultName(ref)
  const store = new WaferStore(locations.wafers)
  if ((await store.hasData(name)) && readMeta(store.dir(name), name).image?.ref === ref.skopeo) {
    return {pulled: false, wafer: name}
  }

  const pull = pullSteps(locations, text, {...registry, name, signal})
  try {
    for (const step of [pull.resolve]) await step.run(report)
    for (const step of pull.steps()) {
      const skip = step.skip?.()
      if (skip !== undefined) continue
      report(step.title)
      // eslint-disable-next-line no-await-in-loop
      await step.run(report)
    }
  } finally {
    await pull.dispose()
  }

  return {pulled: pull.result.made, wafer: pull.result.name}
}
