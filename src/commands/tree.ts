import {Args} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {WafersError} from '../lib/errors.js'
import {WaferNode, ancestryForest, originNote, readInventory} from '../lib/ops/inventory.js'
import {checkName} from '../lib/store/names.js'
import {WaferStore, locationsFromEnv} from '../lib/store/store.js'
import {DrawNode, drawTree} from '../lib/ui/render.js'

export default class Tree extends WafersCommand {
  static args = {
    name: Args.string({description: 'Show only this wafer and the wafers built on it.'}),
  }
  static description = `Draws every wafer under its parent, base wafers at the left, as the tree program draws directories. A wafer stacked right now is marked "stacked at MOUNTPOINT"; a wafer that is a read-only lower layer of a live stack is marked "lower layer of MOUNTPOINT", and a use the mount table here does not show (a stack in another mount namespace, a detached one still used) is said too, as list says it. Wafers whose parent is missing or whose ancestry loops are drawn as roots with a note. A wafer that holds one layer of a pulled image is marked "image layer", the top wafer a pull made "from REF".`
  static enableJsonFlag = true
  static examples = [
    {command: '<%= config.bin %> <%= command.id %>', description: 'Draw the whole forest of wafers:'},
    {command: '<%= config.bin %> <%= command.id %> archbase', description: 'Draw archbase and everything built on it:'},
    {
      command: '<%= config.bin %> <%= command.id %> --json',
      description: 'Print nested {name, stacked, mountpoint, lowerOf, children} objects:',
    },
  ]
  static summary = 'Draw the wafers as a tree of parents and children.'

  async run(): Promise<WaferNode[]> {
    const {args} = await this.parse(Tree)
    const locations = locationsFromEnv()
    const store = new WaferStore(locations.wafers)
    if (args.name !== undefined) checkName(args.name)
    const inventory = await readInventory(store, {hidden: true, stacks: locations.stacks})
    if (args.name !== undefined && !inventory.wafers.has(args.name)) {
      throw new WafersError(`wafer ${args.name} not found in ${store.root}.`)
    }

    const forest = ancestryForest(inventory, args.name)
    if (this.jsonEnabled()) return forest
    if (forest.length === 0) this.log(`no wafers in ${store.root}`)
    for (const line of drawTree(forest.map((node) => toDrawNode(node)))) this.log(line)
    return forest
  }
}

function toDrawNode(node: WaferNode): DrawNode {
  const notes = []
  if (node.mountpoint !== null) notes.push(`stacked at ${node.mountpoint}`)
  if (node.lowerOf.length > 0) notes.push(`lower layer of ${node.lowerOf.join(', ')}`)
  for (const use of node.elsewhere ?? []) notes.push(use.how)
  if (node.problem) notes.push(node.problem)
  const origin = originNote(node)
  if (origin) notes.push(origin)
  return {
    children: node.children.map((child) => toDrawNode(child)),
    label: notes.length > 0 ? `${node.name} (${notes.join('; ')})` : node.name,
  }
}
