import {Args, Flags} from '@oclif/core'

import {WafersCommand} from '../command.js'
import {WafersError} from '../lib/errors.js'
import {interruptSignal} from '../lib/ui/interrupt.js'
import {timeoutOptions, tlsVerifyValue} from '../lib/oci/flags.js'
import {registryFlags, signFlags} from '../registry-flags.js'
import type {PushResult} from '../lib/oci/push.js'
import {progressMode, runSteps} from '../lib/ui/progress.js'
import {locationsFromEnv} from '../lib/store/store.js'

export default class Push extends WafersCommand {
  static args = {
    name: Args.string({description: 'The top wafer; its whole ancestry is pushed.', required: true}),
    ref: Args.string({
      description:
        'Where to: docker://HOST/REPO:TAG (a bare HOST/REPO:TAG means docker://), oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE.',
      required: true,
    }),
  }
  static description = `NAME's ancestry, bottom first, becomes one OCI image: one layer per wafer that has files of its own, and a history entry for each wafer without (such as the empty top a pull makes). The image config (Env, Entrypoint, Cmd, ...) is that of the nearest wafer that came from an image, NAME first; without one it is a default config for this machine's platform.

Layers are reproducible: the same files give the same layer digest on every push and every machine. Packed layers are kept in $WAFERS/.oci and reused while the wafer is unchanged, so pushing again packs nothing and the registry receives nothing new. A wafer that is the writable top of a mounted stack may change while it is packed, so push refuses it unless --force.

--sign-by FINGERPRINT signs the image with that GPG key (from GNUPGHOME's keyring), --sign-by-sigstore-private-key FILE with a sigstore key, as skopeo copy does; where the signatures go (a lookaside directory or web server, or sigstore attachments) is what the registries.d files say (/etc/containers/registries.d, or --registries.d DIR). No trust policy is asked about wafers' own layout, which push copies from.`
  static enableJsonFlag = true
  static examples = [
    {
      command: '<%= config.bin %> <%= command.id %> web docker://registry.example.com/stacks/web:1.0',
      description: 'Push wafer web and everything below it:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> --tls-verify=false --creds ci:secret web localhost:5000/web:1.0',
      description: 'Push to a registry on plain HTTP that wants a login:',
    },
    {
      command:
        '<%= config.bin %> <%= command.id %> --tls-verify=false --sign-by 0123456789ABCDEF0123456789ABCDEF01234567 web 127.0.0.1:5000/stacks/web:1.0',
      description: 'Push and sign with a GPG key:',
    },
    {
      command: '<%= config.bin %> <%= command.id %> web oci-archive:/tmp/web.tar:1.0',
      description: 'Write an OCI archive instead:',
    },
  ]
  static flags = {
    ...registryFlags(),
    ...signFlags(),
    force: Flags.boolean({description: 'Push even when a wafer of the stack is the writable top of a mounted stack.'}),
  }
  static summary = "Push a wafer's stack to a registry as an OCI image, one layer per wafer."
  static usage =
    '<%= command.id %> NAME REF [--sign-by FINGERPRINT | --sign-by-sigstore-private-key FILE] [--registries.d DIR] [--tls-verify=false] [--creds USER:PASS | --authfile FILE] [--force] [--json]'

  async run(): Promise<PushResult> {
    const {args, flags} = await this.parse(Push, tlsVerifyValue(this.argv))
    const {pushSteps} = await import('../lib/oci/push.js')
    const interrupt = interruptSignal()
    const mode = progressMode({json: this.jsonEnabled()})
    const {dispose, result, steps, trace} = pushSteps(locationsFromEnv(), args.name, args.ref, {
      authfile: flags.authfile,
      creds: flags.creds,
      force: flags.force,
      signal: interrupt.signal,
      tlsVerify: flags['tls-verify'],
      ...timeoutOptions(flags),
      trust: {
        registriesD: flags['registries.d'],
        signBy: flags['sign-by'],
        signBySigstorePrivateKey: flags['sign-by-sigstore-private-key'],
        signPassphraseFile: flags['sign-passphrase-file'],
      },
      warn: (message) => this.warn(message),
    })
    try {
      await runSteps([trace], mode, interrupt.signal)
      await runSteps(steps(), mode, interrupt.signal)
    } catch (error) {
      if (interrupt.signal.aborted) {
        throw new WafersError(
          `interrupted: ${args.ref} was not pushed; layers packed completely are kept for the next push.`,
          {exit: 130},
        )
      }

      throw error
    } finally {
      interrupt.dispose()
      await dispose()
    }

    const made = result.layers.filter((layer) => layer.made).length
    this.log(
      `pushed ${args.name} to ${args.ref} (${result.layers.length} layers, ${made} packed now): ${result.digest}`,
    )
    return result
  }
}
