import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const bin = fileURLToPath(new URL('../bin/run.js', import.meta.url))
const names = fileURLToPath(new URL('../completions/wafers.bash', import.meta.url))

describe('shell completion', function () {
  let root: string

  beforeEach(async function () {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-completion-'))
  })

  afterEach(async function () {
    await fs.rm(root, {force: true, recursive: true})
  })

  /** What bash offers for `words`, the last being the word being completed. */
  async function complete(words: string[], env: Record<string, string>): Promise<string[]> {
    const functions = path.join(root, 'home', '.cache', 'wafers', 'autocomplete', 'functions', 'bash', 'wafers.bash')
    const run = await execa(
      'bash',
      [
        '--noprofile',
        '--norc',
        '-c',
        // bash-completion's helpers, as no-ops: the test shell has no bash-completion loaded.
        '_get_comp_words_by_ref() { :; }; __ltrim_colon_completions() { :; }; source "$1"; source "$2"; shift 2; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _wafers_complete_names; printf "%s\\n" "${COMPREPLY[@]}"',
        'bash',
        functions,
        names,
        ...words,
      ],
      {env},
    )
    return run.stdout
      .split('\n')
      .filter((line) => line !== '')
      .sort()
  }

  it('completes commands and flags through @oclif/plugin-autocomplete, and wafer names through completions/wafers.bash', async function () {
    const env = {
      HOME: path.join(root, 'home'),
      STACKS: path.join(root, 'stacks'),
      WAFERS: path.join(root, 'wafers'),
      XDG_CACHE_HOME: '',
    }
    for (const dir of ['wafers/web/data', 'wafers/web-db/data', 'wafers/base/data', 'stacks/web']) {
      await fs.mkdir(path.join(root, dir), {recursive: true})
    }

    const refresh = await execa(process.execPath, [bin, 'autocomplete', '--refresh-cache'], {env, reject: false})
    expect(refresh.exitCode, refresh.stderr).to.equal(0)
    expect(await complete(['wafers', 'rm', 'we'], env)).to.deep.equal(['web', 'web-db'])
    expect(await complete(['wafers', 'diff', ''], env)).to.deep.equal(['base', 'web', 'web-db'])
    expect(await complete(['wafers', 'unstack', ''], env)).to.deep.equal(['web'])
    for (const verb of ['cp', 'mv', 'flatten', 'export']) {
      expect(await complete(['wafers', verb, 'we'], env), verb).to.deep.equal(['web', 'web-db'])
    }

    // Every other place a wafer is an argument, by position or as a flag's value.
    for (const words of [
      ['push', 'we'],
      ['create', 'new', 'we'],
      ['pull', 'docker://127.0.0.1:5000/web:1', 'we'],
      ['stack', 'new', 'we'],
      ['stack', '-n', 'we'],
      ['stack', '--force', '--name', 'we'],
      ['build', '-t', 'we'],
    ]) {
      expect(await complete(['wafers', ...words], env), words.join(' ')).to.deep.equal(['web', 'web-db'])
    }

    // New names are not offered existing ones: create's NAME, cp's and mv's second argument.
    for (const words of [
      ['create', 'we'],
      ['cp', 'web', 'we'],
      ['mv', 'web', 'we'],
    ]) {
      expect(await complete(['wafers', ...words], env), words.join(' ')).to.deep.equal([])
    }

    // export's second argument is the tarball: no wafer names there.
    expect(await complete(['wafers', 'export', 'web', 'we'], env)).to.deep.equal([])
    expect(await complete(['wafers', 'rm', '--r'], env)).to.deep.equal(['--recursive'])
    expect(await complete(['wafers', 'di'], env)).to.deep.equal(['diff', 'disable'])

    // Every argument a command's help calls an existing wafer completes wafer names (or, for a
    // stack, stack names): a new command with one cannot be forgotten in completions/wafers.bash.
    const manifest = JSON.parse(
      await fs.readFile(fileURLToPath(new URL('../oclif.manifest.json', import.meta.url)), 'utf8'),
    )
    let checked = 0
    for (const [id, command] of Object.entries<{args: Record<string, {description?: string}>}>(manifest.commands)) {
      for (const [index, arg] of Object.values(command.args).entries()) {
        const description = arg.description ?? ''
        if (!/\bwafer\b/i.test(description) || /must not exist|\bnew wafer\b/i.test(description)) continue
        const before = Array.from({length: index}, () => 'web')
        const offered = ['web', 'web-db'].filter((name) => id !== 'unstack' || name === 'web')
        expect(await complete(['wafers', id, ...before, 'we'], env), `${id} argument ${index + 1}`).to.deep.equal(
          offered,
        )
        checked++
      }
    }

    expect(checked).to.be.greaterThan(12)
  })
})
