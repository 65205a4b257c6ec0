import {readMeta} from '../store/meta.js'
import {parseReference, defaultName} from '../oci/reference.js'
import {type Platform, hostPlatform} from '../oci/platform.js'
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
  platform: Platform = hostPlatform(),
): Promise<{pulled: boolean; wafer: string}> {
  const ref = parseReference(text)
  const host = hostPlatform()
  // Another platform's image of the same reference is another wafer.
  const foreign = platform.architecture !== host.architecture || platform.os !== host.os || platform.variant
  const suffix = foreign ? `-${[platform.os, platform.architecture, platform.variant].filter(Boolean).join('-')}` : ''
  const name = `${defaultName(ref).slice(0, 64 - suffix.length)}${suffix}`
  const store = new WaferStore(locations.wafers)
  const held = (await store.hasData(name)) ? readMeta(store.dir(name), name).image : undefined
  if (held?.ref === ref.skopeo && held.architecture === platform.architecture && held.os === platform.os) {
    return {pulled: false, wafer: name}
  }

  const pull = pullSteps(locations, text, {...registry, name, platform, signal})
  try {
    for (const step of [pull.resolve]) await step.run(report)
    for (const step of pull.steps()) {
      const skip = step.skip?.()
      if (skip !== undefined) continue
      report(step.title)
      await step.run(report)
    }
  } finally {
    await pull.dispose()
  }

  return {pulled: pull.result.made, wafer: pull.result.name}
}
