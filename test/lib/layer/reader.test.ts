import {expect} from 'chai'

import {WafersError} from '../../../src/lib/errors.js'
import {BLOCK, encodeHeader, padded, paxRecord} from '../../../src/lib/layer/tar/header.js'
import {type TarEntry, readTar} from '../../../src/lib/layer/tar/reader.js'

interface Spec {
  content?: string
  link?: string
  name: string
  /** Raw pax records put before the entry (a pax 'x' header), as written, odd spacing and all. */
  pax?: Buffer
  type?: string
}

/** A ustar header block of `name` (at most 100 bytes) whose size field says `size`. */
function block(name: string, type: string, size: number, link = ''): Buffer {
  return encodeHeader({
    gid: 0,
    linkname: Buffer.from(link),
    mode: type === '5' ? 0o755 : 0o644,
    mtime: 1_600_000_000,
    name: Buffer.from(name),
    size,
    typeflag: type,
    uid: 0,
  })
}

function pad(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc(padded(data.length) - data.length)])
}

/** A tar of the given entries, each with its raw pax header when it has one. */
function tarOf(specs: Spec[]): Buffer {
  const parts: Buffer[] = []
  for (const spec of specs) {
    const content = Buffer.from(spec.content ?? '')
    if (spec.pax) parts.push(block('PaxHeader', 'x', spec.pax.length), pad(spec.pax))
    parts.push(block(spec.name, spec.type ?? '0', content.length, spec.link), pad(content))
  }

  return Buffer.concat([...parts, Buffer.alloc(2 * BLOCK)])
}

async function* chunks(tar: Buffer): AsyncGenerator<Buffer> {
  yield tar
}

/** The entries wafers reads ("type path"), or the sentence it refuses the tar with. */
async function read(tar: Buffer | AsyncIterable<Buffer>, layer = true, paths = true): Promise<string[] | string> {
  const out: string[] = []
  try {
    const source = Buffer.isBuffer(tar) ? chunks(tar) : tar
    for await (const entry of readTar(source, {layer, name: 'the layer'})) {
      for await (const part of entry.data()) void part
      out.push(paths ? `${entry.type}${entry.moot ? ' (moot)' : ''} ${pathOf(entry)}` : entry.type)
    }

    return out
  } catch (error) {
    if (error instanceof WafersError) return error.message
    throw error
  }
}

function pathOf(entry: TarEntry): string {
  const parts: string[] = []
  for (let n = entry.node; n.parent; n = n.parent) parts.push(n.name.toString())
  return parts.reverse().join('/')
}

describe('the tar reader (unit)', () => {
  describe('refuses, in one sentence naming the entry, what readers could read two ways', () => {
    const cases: [string, Spec[], string][] = [
      [
        'a pax record with two blanks before its key (a rename to GNU tar)',
        [{name: 'innocent', pax: Buffer.from('14  path=zzz/\n')}],
        'the layer was refused: its entry "innocent" has a malformed pax header (a pax record has blanks in its key).',
      ],
      [
        'a pax record with no =',
        [{name: 'f', pax: Buffer.from('11 pathzzz\n')}],
        'the layer was refused: its entry "f" has a malformed pax header (a pax record has no \'=\').',
      ],
      [
        'a pax record whose length is wrong',
        [{name: 'f', pax: Buffer.from('30 path=zzz\n')}],
        'the layer was refused: its entry "f" has a malformed pax header (a pax record has a wrong length).',
      ],
      [
        'a pax record with a length of leading zeros',
        [{name: 'f', pax: Buffer.from('013 path=zzz\n')}],
        'the layer was refused: its entry "f" has a malformed pax header (a pax record has a bad length).',
      ],
      [
        'two path records in one header',
        [{name: 'f', pax: Buffer.concat([paxRecord('path', 'a'), paxRecord('path', 'b')])}],
        'the layer was refused: its entry "f" has a malformed pax header (a pax header sets path twice).',
      ],
      [
        'a pax size that contradicts the header',
        [{content: 'data', name: 'f', pax: paxRecord('size', '0')}],
        'the layer was refused: its entry "f" has a pax size that contradicts its header.',
      ],
      [
        'a GNU sparse record',
        [{name: 'f', pax: paxRecord('GNU.sparse.size', '1099511627776')}],
        'the layer was refused: its entry "f" is a sparse file, which wafers does not unpack.',
      ],
      [
        'a GNU sparse entry',
        [{name: 'f', type: 'S'}],
        'the layer was refused: its entry "f" is a sparse file, which wafers does not unpack.',
      ],
      [
        'an unknown entry type that carries data',
        [{content: 'hidden headers', name: 'f', type: 'Q'}],
        'the layer was refused: its entry "f" has the tar entry type "Q", which wafers does not unpack.',
      ],
      [
        'a POSIX ACL, whose loss would widen access',
        [{name: 'f', pax: paxRecord('SCHILY.acl.access', 'user::rw-,group::r--,mask::rwx,other::---')}],
        'the layer was refused: its entry "f" has a POSIX ACL, which wafers does not unpack yet.',
      ],
      [
        'a pax path that is not UTF-8',
        [{name: 'f', pax: paxRecord('path', Buffer.from([0x61, 0xff]))}],
        'the layer was refused: its entry "f" has a pax path that is not UTF-8.',
      ],
    ]
    for (const [title, specs, message] of cases) {
      it(title, async () => {
        expect(await read(tarOf(specs))).to.equal(message)
      })
    }

    it('a global pax header that sets a path', async () => {
      const records = paxRecord('path', 'elsewhere')
      const tar = Buffer.concat([block('g', 'g', records.length), pad(records), tarOf([{name: 'f'}])])
      expect(await read(tar)).to.equal(
        'the layer is not a valid tar: a global pax header sets "path", which wafers does not apply at its start.',
      )
    })

    it('a lone zero block followed by more entries, which every reader would hide', async () => {
      const tar = Buffer.concat([
        tarOf([{name: 'a'}]).subarray(0, BLOCK),
        Buffer.alloc(BLOCK),
        tarOf([{name: 'hidden'}]),
      ])
      expect(await read(tar)).to.equal(
        'the layer is not a valid tar: a lone zero block is followed by more of the archive after the entry "a".',
      )
    })

    it('a pax path with hdrcharset=BINARY is read as bytes', async () => {
      const records = Buffer.concat([paxRecord('hdrcharset', 'BINARY'), paxRecord('path', Buffer.from([0x61, 0xff]))])
      const entries = (await read(tarOf([{name: 'f', pax: records}]))) as string[]
      expect(entries).to.have.length(1)
    })

    it('cuts a long name to 200 characters', async () => {
      const name = 'x'.repeat(5000)
      const message = (await read(tarOf([{name: 'f', pax: paxRecord('path', `../${name}`)}]))) as string
      expect(message).to.equal(
        `the layer was refused: its entry "../${'x'.repeat(197)}"… has ".." in its name, which could land outside.`,
      )
    })
  })

  describe('checks each entry against the earlier ones', () => {
    const cases: [string, Spec[], string[] | string][] = [
      [
        'an absolute name',
        [{name: '/etc/passwd'}],
        'the layer was refused: its entry "/etc/passwd" has an absolute name, which would land outside.',
      ],
      [
        'a ../ name',
        [{name: 'a/../../x'}],
        'the layer was refused: its entry "a/../../x" has ".." in its name, which could land outside.',
      ],
      [
        'a path through a symlink an earlier entry made',
        [{link: '/etc', name: 'a', type: '2'}, {name: 'a/b/c'}],
        'the layer was refused: its entry "a/b/c" lands through the symlink "a" made by an earlier entry.',
      ],
      [
        'a path under a file an earlier entry made',
        [{name: 'a'}, {name: 'a/b', type: '5'}],
        'the layer was refused: its entry "a/b" lands under "a", which an earlier entry made a file.',
      ],
      [
        'a hard link to a file no earlier entry made',
        [{link: 'etc/shadow', name: 'x', type: '1'}],
        'the layer was refused: its entry "x" is a hard link to "etc/shadow", which is not a regular file made by an earlier entry.',
      ],
      [
        'a hard link to a directory',
        [
          {name: 'd/', type: '5'},
          {link: 'd', name: 'x', type: '1'},
        ],
        'the layer was refused: its entry "x" is a hard link to "d", which is not a regular file made by an earlier entry.',
      ],
      [
        'a hard link through a symlink',
        [
          {link: '/', name: 'l', type: '2'},
          {link: 'l/etc/passwd', name: 'x', type: '1'},
        ],
        'the layer was refused: its entry "x" links through the symlink "l" made by an earlier entry.',
      ],
      [
        'a directory that holds entries replaced by a file',
        [{name: 'd/', type: '5'}, {name: 'd/f'}, {name: 'd'}],
        'the layer was refused: its entry "d" replaces the directory "d", which holds entries made by earlier entries.',
      ],
      [
        'a whiteout through a symlink',
        [{link: '/etc', name: 'l', type: '2'}, {name: 'l/.wh.passwd'}],
        'the layer was refused: its entry "l/.wh.passwd" lands through the symlink "l" made by an earlier entry.',
      ],
      [
        'a hard link to an earlier file, and replacements of another kind (as tar does)',
        [
          {content: 'x', name: 'f'},
          {link: 'f', name: 'g', type: '1'},
          {name: 'a'},
          {name: 'a/', type: '5'},
          {link: 'x', name: 's', type: '2'},
          {name: 's/', type: '5'},
          {name: 's/in'},
        ],
        ['file f', 'link g', 'file a', 'dir a', 'symlink s', 'dir s', 'file s/in'],
      ],
      [
        'a whiteout under a file an earlier entry made (umoci writes these): nothing to do',
        [{name: 'd'}, {name: 'd/.wh.x'}],
        ['file d', 'whiteout (moot) '],
      ],
      [
        'whiteouts and opaque markers',
        [{name: 'd/.wh..wh..opq'}, {name: 'd/.wh.gone'}, {name: '.wh..wh.plnk'}, {name: 'e/x'}],
        ['opaque d', 'whiteout d/gone', 'file e/x'],
      ],
    ]
    for (const [title, specs, expected] of cases) {
      it(title, async () => {
        expect(await read(tarOf(specs))).to.deep.equal(expected)
      })
    }

    it('reads .wh. names as ordinary names outside a layer', async () => {
      expect(await read(tarOf([{name: 'd/.wh.x'}]), false)).to.deep.equal(['file d/.wh.x'])
    })
  })

  describe('in time linear in the archive', () => {
    async function* nested(depth: number): AsyncGenerator<Buffer> {
      let name = ''
      for (let i = 0; i < depth; i++) {
        name += 'd/'
        yield encodeHeader({gid: 0, mode: 0o755, mtime: 0, name: Buffer.from(name), size: 0, typeflag: '5', uid: 0})
      }

      yield Buffer.alloc(2 * BLOCK)
    }

    // A bound far above what the reader takes and far below what a check quadratic in the
    // entries took (2,000 entries: 24 s), so the test fails only on the class of bug.
    it('reads 10,000 nested directories', async function () {
      this.timeout(60_000)
      const started = Date.now()
      const entries = (await read(nested(10_000), true, false)) as string[]
      expect(entries).to.have.length(10_000)
      expect(Date.now() - started).to.be.below(10_000)
    })

    it('reads one name of 40,000 components, and 2,000 entries in one directory', async function () {
      this.timeout(60_000)
      const started = Date.now()
      const deep = (await read(
        tarOf([{name: 'f', pax: paxRecord('path', 'a/'.repeat(40_000) + 'f')}]),
        true,
        false,
      )) as string[]
      expect(deep).to.have.length(1)
      const wide = Array.from({length: 2000}, (_, i) => ({name: `dir/sub/file-${i}`}))
      expect(await read(tarOf(wide), true, false)).to.have.length(2000)
      expect(Date.now() - started).to.be.below(10_000)
    })
  })
})
