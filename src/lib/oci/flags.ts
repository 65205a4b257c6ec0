import {WafersError, quote} from '../errors.js'

/** The registry flags pull and push share, spelled as skopeo and podman spell them. */
export const REGISTRY_FLAG_HELP = {
  commandTimeout:
    'Give up on each skopeo run (reading the image, downloading, pushing) that takes longer than this: 90s, 10m, 1h30m. No limit by default.',
  idleTimeout:
    'Give up when the registry (or archive) moves less than 1 KiB in this long, such as a registry that never answers or answers a byte a second, or, while a pull downloads layers, less than 1 KiB a second over this long, such as one that trickles. Default 60s.',
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

/** A duration as skopeo and Go spell them (`90s`, `1500ms`, `1h30m`), in milliseconds; `flag` names it in the refusal. */
export function parseDuration(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined
  const units: Record<string, number> = {h: 3_600_000, m: 60_000, ms: 1, s: 1000}
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ms|h|m|s)/g)]
  if (parts.length === 0 || parts.map((part) => part[0]).join('') !== text) {
    throw new WafersError(`${flag} takes a duration such as 30s, 2m or 1h30m, not ${JSON.stringify(text)}.`)
  }

  const ms = Math.round(parts.reduce((sum, part) => sum + Number(part[1]) * units[part[2]], 0))
  if (ms <= 0) throw new WafersError(`${flag} takes a duration longer than 0, not ${JSON.stringify(text)}.`)
  return ms
}

/** The time-out flags pull, push and build take, as RegistryOptions carries them. */
export function timeoutOptions(flags: {'command-timeout'?: string; 'idle-timeout'?: string}): {
  commandTimeout?: number
  idleTimeout?: number
} {
  return {
    commandTimeout: parseDuration(flags['command-timeout'], '--command-timeout'),
    idleTimeout: parseDuration(flags['idle-timeout'], '--idle-timeout'),
  }
}
