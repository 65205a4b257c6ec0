import type {SeedersHook} from 'wafers'

import {debootstrapSeeder} from './debootstrap.js'
import {pacstrapSeeder} from './pacstrap.js'

/** Offers debootstrap and pacstrap to `wafers create --seed` and `wafers stack --seed`. */
const hook: SeedersHook = async function () {
  return [debootstrapSeeder, pacstrapSeeder]
}

export default hook
