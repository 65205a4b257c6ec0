import {WafersError} from '../errors.js'
import type {ImageConfigFile} from './image.js'

/** An architecture and OS, as image configs and indexes spell them (`amd64`, `linux`). */
export interface Platform {
  architecture: string
  os: string
  variant?: string
}

/** The OCI architecture name of the machine wafers runs on. */
export function hostPlatform(): Platform {
  const architectures: Record<string, string> = {
    arm: 'arm',
    arm64: 'arm64',
    ia32: '386',
    loong64: 'loong64',
    mips: 'mips',
    mipsel: 'mipsle',
    ppc64: 'ppc64le',
    riscv64: 'riscv64',
    s390x: 's390x',
    x64: 'amd64',
  }
  return {architecture: architectures[process.arch] ?? process.arch, os: 'linux'}
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
