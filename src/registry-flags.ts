import {Flags} from '@oclif/core'

import {REGISTRY_FLAG_HELP} from './lib/oci/flags.js'

/**
 * The registry flags of pull, push and build, spelled as skopeo and podman spell them
 * (`--tls-verify=false` goes through tlsVerifyValue first). `prefix` starts each description.
 */
export function registryFlags(prefix = '') {
  return {
    authfile: Flags.string({description: `${prefix}${REGISTRY_FLAG_HELP.authfile}`, helpValue: 'FILE'}),
    'command-timeout': Flags.string({
      description: `${prefix}${REGISTRY_FLAG_HELP.commandTimeout}`,
      helpValue: 'DURATION',
    }),
    creds: Flags.string({description: `${prefix}${REGISTRY_FLAG_HELP.creds}`, helpValue: 'USER:PASS'}),
    'idle-timeout': Flags.string({description: `${prefix}${REGISTRY_FLAG_HELP.idleTimeout}`, helpValue: 'DURATION'}),
    'tls-verify': Flags.boolean({
      allowNo: true,
      default: true,
      description: `${prefix}${REGISTRY_FLAG_HELP.tlsVerify}`,
    }),
  }
}
