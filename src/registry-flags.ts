import {Flags} from '@oclif/core'

import {REGISTRY_FLAG_HELP, TRUST_FLAG_HELP} from './lib/oci/flags.js'

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

/** The trust flags of pull (which images to accept), spelled as skopeo spells them. */
export function policyFlags() {
  return {
    policy: Flags.string({description: TRUST_FLAG_HELP.policy, helpValue: 'FILE'}),
    'registries.d': Flags.string({description: TRUST_FLAG_HELP.registriesD, helpValue: 'DIR'}),
  }
}

/** The signing flags of push, spelled as skopeo copy spells them. */
export function signFlags() {
  return {
    'registries.d': Flags.string({description: TRUST_FLAG_HELP.registriesD, helpValue: 'DIR'}),
    'sign-by': Flags.string({
      description: TRUST_FLAG_HELP.signBy,
      exclusive: ['sign-by-sigstore-private-key'],
      helpValue: 'FINGERPRINT',
    }),
    'sign-by-sigstore-private-key': Flags.string({
      description: TRUST_FLAG_HELP.signBySigstorePrivateKey,
      helpValue: 'FILE',
    }),
    'sign-passphrase-file': Flags.string({description: TRUST_FLAG_HELP.signPassphraseFile, helpValue: 'FILE'}),
  }
}
