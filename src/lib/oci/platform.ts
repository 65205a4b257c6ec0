/**
 * Platforms: the host's as OCI names it (one place for pull, push and build), how one is written,
 * and the check that an image is for this machine.
 */
import {WafersError} from '../errors.js'
import type {ImageConfigFile} from './image.js'

/** An architecture and OS, as image configs and indexes spell them (`amd64`, `linux`). */
export interface Platform {
  architecture: string
  os: string
  variant?: string
}

/** How OCI names the architectures Node names differently (`process.arch`: x64, ia32, ...). */
const OCI_ARCHITECTURES: Record<string, string> = {
  ia32: '386',
  mipsel: 'mipsle',
  ppc64: 'ppc64le',
  x64: 'amd64',
}

/** The OCI name of Node's architecture `arch` (`x64` is `amd64`); the names both share pass as they are. */
export function ociArchitecture(arch: string): string {
  return Object.hasOwn(OCI_ARCHITECTURES, arch) ? OCI_ARCHITECTURES[arch] : arch
}

/** The platform of the machine wafers runs on, as OCI names it (`linux/amd64`); pull, push and build use it. */
export function hostPlatform(): Platform {
  return {architecture: ociArchitecture(process.arch), os: 'linux'}
}

/** `linux/amd64`, `linux/arm/v7`. */
export function platformText(platform: Platform): string {
  return [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/')
}

/** Refuses an image config for another architecture or OS than this machine's. */
export function checkPlatform(config: ImageConfigFile, platform: Platform, what: string): void {
  if (config.os !== platform.os || config.architecture !== platform.architecture) {
    throw new WafersError(
      `${what} is for ${platformText(config)}, not for ${platformText(platform)}, this machine's platform.`,
    )
  }
}

/** `OS/ARCH[/VARIANT]`, as --platform and FROM --platform take it. */
export function parsePlatform(text: string, what: string): Platform {
  const parts = text.split('/')
  if (parts.length < 2 || parts.length > 3 || parts.some((part) => !/^[a-z0-9_]+$/.test(part))) {
    throw new WafersError(`${what} takes OS/ARCH[/VARIANT], such as linux/arm64, not ${JSON.stringify(text)}.`, {
      exit: 2,
    })
  }

  return {architecture: parts[1], os: parts[0], ...(parts[2] ? {variant: parts[2]} : {})}
}
