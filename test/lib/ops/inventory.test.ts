import {expect} from 'chai'
import {promises as fs, mkdirSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {PassThrough} from 'node:stream'

import {ancestryForest, descendants, readInventory} from '../../../src/lib/ops/inventory.js'
import {WaferStore} from '../../../src/lib/store/store.js'
import {confirm} from '../../../src/lib/ui/confirm.js'
import {drawTree, humanSize, table} from '../../../src/lib/ui/render.js'

describe('inventory of wafers', function () {
  let root: string
  let store: WaferStore

  beforeEach(async function () {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-inventory-'))
    store = new WaferStore(root)
  })

  afterEach(async function () {
    await fs.rm(root, {force: true, recursive: true})
  })

  async function wafer(name: string, parent?: string): Promise<void> {
    await fs.mkdir(path.join(root, name, 'data'), {recursive: true})
    if (parent !== undefined) await fs.writeFile(path.join(root, name, 'parent'), parent)
  }

  it('counts depth, finds children and notes missing parents and loops', async function () {
    await wafer('base')
    await wafer('a', 'base')
    await wafer('b', 'a')
    await wafer('c', 'base')
    await wafer('orphan', 'gone')
    await wafer('x', 'y')
    await wafer('y', 'x')
    await fs.mkdir(path.join(root, '.links'))
    const inventory = await readInventory(store, {table: []})
    const summary = [...inventory.wafers.values()].map((w) => [w.name, w.depth, w.problem ?? ''])
    expect(summary).to.deep.equal([
      ['a', 2, ''],
      ['b', 3, ''],
      ['base', 1, ''],
      ['c', 2, ''],
      ['orphan', 1, 'its parent gone does not exist'],
      ['x', 2, 'its ancestry is broken below y'],
      ['y', 1, 'its ancestry loops through x'],
    ])
    expect(descendants(inventory, 'base')).to.deep.equal(['b', 'a', 'c'])
    const forest = ancestryForest(inventory).map((node) => node.name)
    expect(forest).to.deep.equal(['base', 'orphan', 'x'])
    expect(
      drawTree(
        ancestryForest(inventory).map(function toDraw(node): {children: never[]; label: string} {
          return {children: node.children.map((child) => toDraw(child)) as never[], label: node.name}
        }),
      ),
    ).to.deep.equal(['base', '├── a', '│   └── b', '└── c', 'orphan', 'x', '└── y'])
  })

  it('reads 10,000 wafers, depths and all (its speed is measured in npm run bench, not here)', async function () {
    this.timeout(60_000)
    // On tmpfs where there is one: making 10,000 directories on a slow disk takes longer than the test.
    const shm = await fs.stat('/dev/shm').then(
      (stat) => stat.isDirectory(),
      () => false,
    )
    if (shm) {
      await fs.rm(root, {force: true, recursive: true})
      root = await fs.mkdtemp(path.join('/dev/shm', 'wafers-inventory-'))
      store = new WaferStore(root)
    }

    for (let i = 0; i < 10_000; i++) {
      mkdirSync(path.join(root, `w${i}`, 'data'), {recursive: true})
      if (i > 0) writeFileSync(path.join(root, `w${i}`, 'parent'), `w${Math.floor(i / 2)}`)
    }

    const inventory = await readInventory(store, {table: []})
    expect(inventory.wafers.size).to.equal(10_000)
    expect(inventory.wafers.get('w9999')!.depth).to.equal(15)
    expect(inventory.wafers.get('w9999')!.parent).to.equal('w4999')
  })
})

describe('rendering', function () {
  it('pads table columns but not the last one', function () {
    expect(
      table(
        ['A', 'BB', 'C'],
        [
          ['xyz', '', 'last'],
          ['1', '22', ''],
        ],
      ),
    ).to.deep.equal(['A    BB  C', 'xyz      last', '1    22'])
  })

  it('draws deep chains without recursion', function () {
    let node = {children: [], label: 'w999'} as {children: unknown[]; label: string}
    for (let i = 998; i >= 0; i--) node = {children: [node], label: `w${i}`}
    const lines = drawTree([node as never])
    expect(lines).to.have.length(1000)
    expect(lines[2]).to.equal('    └── w2')
  })

  it('prints sizes as du -h does', function () {
    expect([0, 512, 4096, 1536 * 1024, 12 * 1024 ** 3].map((bytes) => humanSize(bytes))).to.deep.equal([
      '0',
      '512',
      '4.0K',
      '1.5M',
      '12G',
    ])
  })
})

describe('confirm', function () {
  for (const [answer, expected] of [
    ['y\n', true],
    ['YES\n', true],
    ['n\n', false],
    ['\n', false],
    ['', false],
  ] as const) {
    it(`takes ${JSON.stringify(answer)} as ${expected ? 'yes' : 'no'}`, async function () {
      const input = new PassThrough()
      const output = new PassThrough()
      const asked = confirm('Delete? [y/N] ', {input, output})
      input.end(answer)
      expect(await asked).to.equal(expected)
      expect(String(output.read())).to.equal('Delete? [y/N] ')
    })
  }
})
