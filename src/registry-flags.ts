import {Flags} from '@oclif/core'

import {REGISTRY_FLAG_HELP} from './lib/oci/flags.js'

/**
 * The registry flags of pull, push and build, spelled as skopeo and podman spell them
 * (`--tls-verify=false` goes through tlsVerifyValue first). `prefix` starts each description.
 */
export function registryFlags(prefix = '') {
  return {
    authfile: Flags.string({description: `${prefix}${REGISTRY_FLAG_HELP.authfile}`, helpValue: 'FILE'}),
    creds: Flags.string({description: `${prefix}${REGISTRY_FLAG_HELP.creds}`, helpValue: 'USER:PASS'}),
    'tls-verify': Flags.boolean({
      allowNo: true,
      default: true,
      description: `${prefix}${REGISTRY_FLAG_HELP.tlsVerify}`,
    }),
  }
}
