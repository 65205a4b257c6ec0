import {WafersError, quote} from '../errors.js'

/** The registry flags pull and push share, spelled as skopeo and podman spell them. */
export const REGISTRY_FLAG_HELP = {
  authfile: 'Read registry credentials from this auth file (containers-auth.json or Docker config.json format).',
  creds: 'Log in to the registry as USER:PASS.',
  tlsVerify: 'Require HTTPS and a trusted certificate; --tls-verify=false for a registry on plain HTTP.',
} as const

/** The trust flags of pull and push, spelled as skopeo 1.9 spells them. */
export const TRUST_FLAG_HELP = {
  policy: 'Accept images as this containers trust policy says (default: /etc/containers/policy.json).',
  registriesD: 'Read the registries.d files of this directory: where signatures are looked up (pull) or stored (push).',
  signBy: 'Sign the image with the GPG key of this fingerprint (GNUPGHOME holds the keyring).',
  signBySigstorePrivateKey: 'Sign the image with the sigstore private key in this file.',
  signPassphraseFile: 'Read the passphrase of the signing key from this file.',
} as const

/**
 * Lets `--tls-verify=false` through, as skopeo and podman spell it: oclif's boolean flags take no
 * value, so `--tls-verify=false` becomes `--no-tls-verify` (hidden) and `--tls-verify=true` the flag alone.
 */
export function tlsVerifyValue(argv: string[]): string[] {
  return argv.map((arg) => {
    const match = /^--tls-verify=(.*)$/.exec(arg)
    if (!match) return arg
    if (match[1] === 'false') return '--no-tls-verify'
    if (match[1] === 'true') return '--tls-verify'
    throw new WafersError(`--tls-verify takes true or false, not ${quote(match[1])}.`)
  })
}
