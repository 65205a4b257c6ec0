import {promises as fs} from 'node:fs'
import path from 'node:path'

/** Debian's own redirector, for hosts whose apt sources name no mirror for the suite. */
export const FALLBACK_MIRROR = 'http://deb.debian.org/debian'

/** One `deb` source of the host's apt configuration. */
export interface AptSource {
  components: string[]
  suites: string[]
  uri: string
}

/** Reads the host's `deb` sources: sources.list and sources.list.d/*.list and *.sources (deb822). */
export async function readAptSources(etcApt = '/etc/apt'): Promise<AptSource[]> {
  const sources = parseOneLine(await readOrEmpty(path.join(etcApt, 'sources.list')))
  const dir = path.join(etcApt, 'sources.list.d')
  const names = (await fs.readdir(dir).catch(() => [] as string[])).sort()
  for (const name of names) {
    const text = await readOrEmpty(path.join(dir, name))
    if (name.endsWith('.list')) sources.push(...parseOneLine(text))
    else if (name.endsWith('.sources')) sources.push(...parseDeb822(text))
  }

  return sources
}

/**
 * The mirror to debootstrap `suite` from: the first host source that serves that suite with its
 * `main` component, or Debian's redirector.
 */
export function pickMirror(sources: AptSource[], suite: string): string {
  const serving = sources.find((source) => source.suites.includes(suite) && source.components.includes('main'))
  return serving ? serving.uri.replace(/\/+$/, '') : FALLBACK_MIRROR
}

/** Parses one-line style sources: `deb [options] URI SUITE COMPONENT...`. */
export function parseOneLine(text: string): AptSource[] {
  const sources: AptSource[] = []
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim()
    if (!line.startsWith('deb ') && !line.startsWith('deb\t')) continue
    const fields = line
      .replace(/\[[^\]]*\]/, ' ')
      .split(/\s+/)
      .slice(1)
    const [uri, suite, ...components] = fields
    if (uri && suite) sources.push({components, suites: [suite], uri})
  }

  return sources
}

/** Parses deb822 sources (`Types: deb`, `URIs:`, `Suites:`, `Components:`, `Enabled:`). */
export function parseDeb822(text: string): AptSource[] {
  const sources: AptSource[] = []
  const lines = text.split('\n').filter((line) => !line.trimStart().startsWith('#'))
  const stanzas = lines.join('\n').split(/\n\s*\n/)
  for (const stanza of stanzas) {
    const fields = new Map<string, string>()
    let last: string | undefined
    for (const line of stanza.split('\n')) {
      if (/^\s/.test(line) && last !== undefined) {
        fields.set(last, `${fields.get(last)} ${line.trim()}`)
        continue
      }

      const match = /^([\w-]+):\s*(.*)$/.exec(line)
      if (!match) continue
      last = match[1].toLowerCase()
      fields.set(last, match[2].trim())
    }

    const words = (key: string) => (fields.get(key) ?? '').split(/\s+/).filter((word) => word !== '')
    if (!words('types').includes('deb') || (fields.get('enabled') ?? 'yes').toLowerCase() === 'no') continue
    for (const uri of words('uris')) sources.push({components: words('components'), suites: words('suites'), uri})
  }

  return sources
}

async function readOrEmpty(file: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8')
  } catch {
    return ''
  }
}
