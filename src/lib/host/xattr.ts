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

// eslint-disable-next-line no-undef -- the bundle's banner defines `require` in every module (see above)
const bundledRequire = typeof require === 'function' ? require : undefined

/**
 * The xattr binding, loaded on first use. Required, not imported, where the module can: the
 * binding is CommonJS, and Node's first ESM import of CommonJS readies its export scanner, which
 * cost `stack` more (about 130 million instructions) than everything else it does. The bundled
 * build (scripts/bundle.js) gives every module a `require`; sources run by tsx may lack it.
 */
export function loadXattr(): Promise<Xattr> {
  loaded ??= (bundledRequire ? Promise.resolve(bundledRequire('@napi-rs/xattr')) : import('@napi-rs/xattr')).then(
    (module) => {
      ready = ((module as {default?: unknown}).default ?? module) as Xattr
      return ready
    },
  )
  return loaded
}

/** The binding if loadXattr() has finished, for synchronous callers that loaded it before. */
export function loadedXattr(): Xattr | undefined {
  return ready
}
