import {Args, Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {WafersError} from '../lib/errors.js'
import {interruptSignal} from '../lib/ui/interrupt.js'
import {timeoutOptions, tlsVerifyValue} from '../lib/oci/flags.js'
import {policyFlags, registryFlags} from '../registry-flags.js'
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

A layer that systemd's importctl pull-oci already unpacked ($STACKS/.oci-sha256:HEX, a real directory) is taken from there by hard links instead of downloaded, leaving importctl's copy as it is; one on another file system, or with overlay attributes of its own, is downloaded after all.

Blob digests and layer diffIDs are checked while unpacking. Ctrl-C or a failed download leaves no half-made wafer; layers unpacked completely are kept and reused by the next pull. Pulling again into the same NAME says it is up to date. When the tag has moved since NAME was pulled, NAME is re-pointed at the new image (its new layers pulled, the ones it shares with the old kept), if nothing would see the change: NAME has no files of its own but its machine id and no wafers built on it; --replace re-points it even so (keeping its files), and re-points a NAME that holds another image. A NAME that is stacked or in use is never re-pointed, and a NAME not made by pull or build is refused. Layers of the old image stay until removed with wafers rm.

Images are accepted as the containers trust policy says (/etc/containers/policy.json, or --policy FILE; signatures are looked up where the registries.d files say, /etc/containers/registries.d or --registries.d DIR), for every transport; a refused image is one sentence and leaves nothing behind.

A layer that a wafer here already holds, because it was pushed from that wafer (a base pushed and pulled back), is not stored twice: when the wafer still packs to that very layer, sits on the same layers below and nothing uses it or a wafer built on it, its files become the layer wafer and it sits on that with an empty data of its own. It shows what it showed, its later changes stay its own, and the image never changes with it. --no-dedupe unpacks a copy instead.

The new NAME gets its own fresh etc/machine-id when the image has one, as \`wafers stack NAME PARENT\` gives one.

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
      command:
        '<%= config.bin %> <%= command.id %> --tls-verify=false --policy /etc/wafers/policy.json --registries.d /etc/wafers/registries.d 127.0.0.1:5000/web:1.2',
      description: 'Pull only what a trust policy accepts (signed images, say):',
    },
    {
      command: '<%= config.bin %> <%= command.id %> oci:/srv/images/app:latest app',
      description: 'Pull from an OCI layout directory:',
    },
  ]
  static flags = {
    ...registryFlags(),
    dedupe: Flags.boolean({
      allowNo: true,
      default: true,
      description:
        'Take a layer from a wafer made here that still holds it (a base pushed and pulled back): its files become the layer wafer and it sits on that, unchanged to see, so nothing is stored twice. --no-dedupe unpacks a copy.',
    }),
    'no-settings': Flags.boolean({
      description: "Do not write the image's command, environment and user to $STACKS/NAME.nspawn.",
    }),
    ...policyFlags(),
    replace: Flags.boolean({
      description:
        'Re-point NAME at this image even when it holds another one, has files of its own (kept) or wafers built on it (which then see the new image). Never while it is stacked.',
    }),
  }
  static summary = 'Pull an OCI image into wafers, one wafer per layer.'
  static usage =
    '<%= command.id %> REF [NAME] [--replace] [--no-dedupe] [--policy FILE] [--registries.d DIR] [--tls-verify=false] [--creds USER:PASS | --authfile FILE] [--json]'

  async run(): Promise<PullResult> {
    const {args, flags} = await this.parse(Pull, tlsVerifyValue(this.argv))
    const {pullSteps} = await import('../lib/oci/pull.js')
    const interrupt = interruptSignal()
    const mode = progressMode({json: this.jsonEnabled()})
    const {dispose, resolve, result, steps} = pullSteps(locationsFromEnv(), args.ref, {
      authfile: flags.authfile,
      creds: flags.creds,
      dedupe: flags.dedupe,
      name: args.name,
      replace: flags.replace,
      signal: interrupt.signal,
      tlsVerify: flags['tls-verify'],
      ...timeoutOptions(flags),
      trust: {policy: flags.policy, registriesD: flags['registries.d']},
      warn: (message) => this.warn(message),
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
      result.replaced !== undefined
        ? `pulled ${args.ref} into ${result.name}, which held ${result.replaced} (${result.layers.length} layers, ${made} new): stack it with \`wafers stack ${result.name}\``
        : result.made
          ? `pulled ${args.ref} into ${result.name} (${result.layers.length} layers, ${made} new): stack it with \`wafers stack ${result.name}\``
          : `${result.name} is up to date with ${args.ref} (${result.digest})`,
    )
    return result
  }
}
