/**
 * Extended attributes through the native binding, loaded once and only by the code that needs
 * them (it costs a native module load). The binding never follows a symbolic link at the last
 * component (lgetxattr and friends).
 */
export interface Xattr {
  getAttribute(file: string, name: string): Promise<Buffer | null>
  getAttributeSync(file: string, name: string): Buffer | null
  listAttributes(file: string): Promise<string[]>
  listAttributesSync(file: string): string[]
  removeAttribute(file: string, name: string): Promise<void>
  removeAttributeSync(file: string, name: string): void
  setAttribute(file: string, name: string, value: Buffer | string): Promise<void>
  setAttributeSync(file: string, name: string, value: Uint8Array | string): void
}

let loaded: Promise<Xattr> | undefined
let ready: Xattr | undefined

/** The xattr binding, loaded on first use. */
export function loadXattr(): Promise<Xattr> {
  loaded ??= import('@napi-rs/xattr').then((module) => {
    ready = ((module as unknown as {default?: Xattr}).default ?? module) as Xattr
    return ready
  })
  return loaded
}

/** The binding if loadXattr() has finished, for synchronous callers that loaded it before. */
export function loadedXattr(): Xattr | undefined {
  return ready
}
