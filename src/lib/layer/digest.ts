import {type Hash, createHash} from 'node:crypto'

const SHA256 = /^sha256:[0-9a-f]{64}$/

/** A new SHA-256 hash to feed a stream through. */
export function sha256(): Hash {
  return createHash('sha256')
}

/** The OCI digest (`sha256:<hex>`) of what went into `hash`. */
export function digestOf(hash: Hash): string {
  return `sha256:${hash.digest('hex')}`
}

/** Whether `digest` is a sha256 digest as OCI writes it (the only algorithm wafers checks). */
export function isSha256Digest(digest: string): boolean {
  return SHA256.test(digest)
}
