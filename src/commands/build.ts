import {Args, Flags} from '@oclif/core'
import path from 'node:path'

import {WafersCommand} from '../command.js'
import type {BuildResult} from '../lib/builder/build.js'
import type {RunNetwork} from '../lib/builder/run.js'
import {WafersError, quote} from '../lib/errors.js'
import {interruptSignal} from '../lib/ui/interrupt.js'
import {timeoutOptions, tlsVerifyValue} from '../lib/oci/flags.js'
import {parsePlatform} from '../lib/oci/platform.js'
import {registryFlags} from '../registry-flags.js'
import {progressMode, runSteps} from '../lib/ui/progress.js'
import {locationsFromEnv} from '../lib/store/store.js'

export default class Build extends WafersCommand {
  static args = {
    context: Args.string({default: '.', description: 'The build context: the directory COPY and ADD read from.'}),
  }
  static description = `Builds a Containerfile (Dockerfile) into a chain of wafers, one per step that changes files, each on the one below, with NAME an empty wafer on top (stack it with \`wafers stack NAME\`). RUN steps run under systemd-nspawn in a private mount of the stack below, with the host's network and resolver (--network none gives them only a loopback device); COPY and ADD read from CONTEXT, leaving out what .dockerignore names. ENV, ARG, WORKDIR, USER, LABEL, CMD, ENTRYPOINT, EXPOSE, SHELL, HEALTHCHECK and ONBUILD make no wafer; they go into the image config kept in NAME's meta.json, which \`wafers push\` sends (SHELL, HEALTHCHECK and ONBUILD as Docker's config has them; a base's ONBUILD triggers run right after its FROM). ADD downloads http and https URLs. RUN --mount takes type=cache (kept in $WAFERS/.cache/build, outside every wafer), type=bind (from the context or a stage, read-only) and type=secret (a --secret file, never stored).

Steps are cached: a step whose parent, instruction, build args and (for COPY and ADD) source contents are unchanged reuses its wafer, so an unchanged rebuild runs nothing. Two builds that reach the same uncached step at once make it once: the second waits for the first and takes its wafer. Building NAME again points it at the new result when NAME holds no files of its own and is not stacked. A failing RUN stops the build, naming the step and its exit code; it leaves no wafer for that step, and the steps before it stay cached.

FROM takes a wafer, any image reference \`wafers pull\` takes (pulled first, into the wafer \`wafers pull\` would make, unless that wafer already holds it; --tls-verify, --creds and --authfile are for that pull), an earlier stage (FROM ... AS NAME), or scratch; --platform (or FROM --platform) picks the image of an index, and --target STAGE ends the build with that stage. COPY --from takes a stage, a wafer or an image to pull.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> -t web .',
      description: 'Build ./Containerfile (or ./Dockerfile) into wafer web:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> -t web -f web.containerfile --build-arg VERSION=2 src',
      description: 'Build another file with a build arg, reading COPY sources from src:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> -t web --no-cache --json .',
      description: 'Rebuild every step and print what each made:',
    },
  ]
  static flags = {
    ...registryFlags('FROM images: '),
    'build-arg': Flags.string({
      description: 'Set build arg KEY to VALUE (KEY=VALUE); repeat for more.',
      multiple: true,
      multipleNonGreedy: true,
    }),
    file: Flags.string({
      char: 'f',
      description: 'The Containerfile [default: CONTEXT/Containerfile, then CONTEXT/Dockerfile].',
    }),
    network: Flags.string({
      aliases: ['net'],
      default: 'host',
      description:
        "The network of every RUN: host (the host's, as buildah's chroot isolation gives) or none (a network of its own with only a loopback device).",
      options: ['host', 'none'],
    }),
    'no-cache': Flags.boolean({description: 'Rebuild every step, whatever the cache holds.'}),
    'no-settings': Flags.boolean({
      description: "Do not write the image's command, environment and user to $STACKS/NAME.nspawn.",
    }),
    platform: Flags.string({
      description: 'The platform (OS/ARCH[/VARIANT], such as linux/arm64) FROM takes from an image index.',
    }),
    secret: Flags.string({
      description: 'A secret for RUN --mount=type=secret,id=ID (id=ID,src=FILE); never stored in a wafer.',
      multiple: true,
      multipleNonGreedy: true,
    }),
    tag: Flags.string({char: 't', description: 'The wafer the build ends in.', required: true}),
    target: Flags.string({description: 'Build up to the stage FROM ... AS STAGE, which the wafer ends in.'}),
  }
  static summary = 'Build a Containerfile into a cached chain of wafers.'
  static usage =
    '<%= command.id %> -t NAME [CONTEXT] [-f FILE] [--build-arg KEY=VALUE]... [--no-cache] [--target STAGE] [--platform OS/ARCH] [--network host|none] [--secret id=ID,src=FILE]... [--tls-verify=false] [--creds USER:PASS | --authfile FILE] [--json]'

  async run(): Promise<BuildResult> {
    const {args, flags} = await this.parse(Build, tlsVerifyValue(this.argv))
    const buildArgs: Record<string, string> = {}
    for (const pair of flags['build-arg'] ?? []) {
      const eq = pair.indexOf('=')
      if (eq <= 0) throw new WafersError(`--build-arg takes KEY=VALUE, not ${quote(pair)}.`, {exit: 2})
      buildArgs[pair.slice(0, eq)] = pair.slice(eq + 1)
    }

    const secrets: Record<string, string> = {}
    for (const given of flags.secret ?? []) {
      const fields = Object.fromEntries(
        given.split(',').map((part) => [part.split('=')[0], part.slice(part.indexOf('=') + 1)]),
      )
      const file = fields.src ?? fields.source
      if (!fields.id || !file)
        throw new WafersError(`--secret takes id=ID,src=FILE, not ${JSON.stringify(given)}.`, {exit: 2})
      secrets[fields.id] = path.resolve(file)
    }

    const {buildSteps} = await import('../lib/builder/build.js')
    const interrupt = interruptSignal()
    let close: (() => Promise<void>) | undefined
    try {
      const build = buildSteps(locationsFromEnv(), {
        buildArgs,
        context: args.context,
        file: flags.file,
        hooks: this.hookRunner(),
        name: flags.tag,
        network: flags.network as RunNetwork,
        noCache: flags['no-cache'],
        platform: flags.platform === undefined ? undefined : parsePlatform(flags.platform, '--platform'),
        secrets,
        registry: {
          authfile: flags.authfile,
          creds: flags.creds,
          tlsVerify: flags['tls-verify'],
          ...timeoutOptions(flags),
        },
        signal: interrupt.signal,
        target: flags.target,
      })
      close = build.close
      const {result, steps} = build
      await runSteps(steps, progressMode({json: this.jsonEnabled()}), interrupt.signal)
      if (!flags['no-settings']) {
        const {writeImageSettings} = await import('../lib/ops/settings.js')
        await writeImageSettings(locationsFromEnv(), result.name)
      }

      const layers = result.steps.filter((step) => step.wafer !== null && !step.instruction.startsWith('FROM '))
      const made = layers.filter((step) => !step.cached).length
      const cached = layers.length - made
      this.log(`built ${result.name}: ${made} wafers made, ${cached} from the cache`)
      return result
    } finally {
      await close?.().catch(() => {})
      interrupt.dispose()
    }
  }
}
