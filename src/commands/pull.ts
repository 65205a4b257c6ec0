import {Args, Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {WafersError} from '../lib/errors.js'
import {interruptSignal} from '../lib/ui/interrupt.js'
import {timeoutOptions, tlsVerifyValue} from '../lib/oci/flags.js'
import {registryFlags} from '../registry-flags.js'
import type {PullResult} from '../lib/oci/pull.js'
import {progressMode, runSteps} from '../lib/ui/progress.js'
import {locationsFromEnv} from '../lib/store/store.js'

export default class Pull extends WafersCommand {
  static args = {
    ref: Args.string({
      description:
        'The image: docker://HOST/REPO:TAG or @sha256:DIGEST (a bare REPO:TAG means docker://), oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE.',
      required: true,
    }),
    name: Args.string({
      description: "The wafer to make on top of the image's layers; default: the repository's last path component.",
    }),
  }

  static description = `Each layer of the image becomes one wafer (named layer-<ChainID>, on the wafer of the layer below), so images that share layers share wafers and only layers not yet here are downloaded and unpacked. NAME is a new empty wafer on top that keeps the image's config (Env, Entrypoint, Cmd, WorkingDir, User, Labels), ready for \`wafers stack NAME\`. From a multi-architecture image, the one for this machine is taken.

Blob digests and layer diffIDs are checked while unpacking. Ctrl-C or a failed download leaves no half-made wafer; layers unpacked completely are kept and reused by the next pull. Pulling again into the same NAME says it is up to date; a NAME that holds anything else is refused.

The image's entrypoint and command, environment, user, working directory and stop signal are written to $STACKS/NAME.nspawn, where systemd-nspawn -M NAME and machinectl read them, so the machine runs the image as podman run would (--no-settings skips it; a NAME.nspawn you wrote is never replaced).`

  static enableJsonFlag = true

  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> docker://registry.example.com/base/debian:bookworm',
      description: 'Pull an image from a registry; the top wafer is called debian:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> --tls-verify=false localhost:5000/web:1.2 web',
      description: 'Pull from a registry on plain HTTP into wafer web:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> oci:/srv/images/app:latest app',
      description: 'Pull from an OCI layout directory:',
    },
  ]

  static flags = {
    ...registryFlags(),
    'no-settings': Flags.boolean({
      description: "Do not write the image's command, environment and user to $STACKS/NAME.nspawn.",
    }),
  }

  static summary = 'Pull an OCI image into wafers, one wafer per layer.'

  static usage = '<%= command.id %> REF [NAME] [--tls-verify=false] [--creds USER:PASS | --authfile FILE] [--json]'

  async run(): Promise<PullResult> {
    const {args, flags} = await this.parse(Pull, tlsVerifyValue(this.argv))
    const {pullSteps} = await import('../lib/oci/pull.js')
    const interrupt = interruptSignal()
    const mode = progressMode({json: this.jsonEnabled()})
    const {dispose, resolve, result, steps} = pullSteps(locationsFromEnv(), args.ref, {
      authfile: flags.authfile,
      creds: flags.creds,
      name: args.name,
      signal: interrupt.signal,
      tlsVerify: flags['tls-verify'],
      ...timeoutOptions(flags),
    })
    try {
      await runSteps([resolve], mode, interrupt.signal)
      await runSteps(steps(), mode, interrupt.signal)
    } catch (error) {
      if (interrupt.signal.aborted) {
        const kept = result.layers.filter((layer) => layer.made).length
        throw new WafersError(
          `interrupted: ${result.name || 'the image'} was not made; ${kept === 1 ? '1 layer unpacked completely is' : `${kept} layers unpacked completely are`} kept for the next pull.`,
          {exit: 130},
        )
      }

      throw error
    } finally {
      interrupt.dispose()
      await dispose()
    }

    if (!flags['no-settings']) {
      const {writeImageSettings} = await import('../lib/ops/settings.js')
      await writeImageSettings(locationsFromEnv(), result.name)
    }

    const made = result.layers.filter((layer) => layer.made).length
    this.log(
      result.made
        ? `pulled ${args.ref} into ${result.name} (${result.layers.length} layers, ${made} new): stack it with \`wafers stack ${result.name}\``
        : `${result.name} is up to date with ${args.ref} (${result.digest})`,
    )
    return result
  }
}
