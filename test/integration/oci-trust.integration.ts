import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {Registry, useRegistry} from '../helpers/registry.js'
import {Sandbox, hasStackTrace, said, snapshot, useSandbox} from '../helpers/sandbox.js'

describe('oci: trust on the wire: pull honours the trust policy, push signs', function () {
  this.timeout(300_000)
  let registry: Registry
  let box: Sandbox
  let other: Sandbox
  /** GNUPGHOME with one signing key, the policy files, registries.d and the lookaside dir. */
  let trust: string
  let fingerprint: string
  const gpgEnv = () => ({GNUPGHOME: path.join(trust, 'gnupg')})

  useRegistry((started) => {
    registry = started
  })

  useSandbox((created) => {
    box = created
  })

  beforeEach(async function () {
    other = await Sandbox.create()
    trust = await fs.mkdtemp(path.join(os.tmpdir(), 'wafers-trust-'))
    await fs.mkdir(path.join(trust, 'gnupg'), {mode: 0o700})
    await execa(
      'gpg',
      ['--batch', '--passphrase', '', '--quick-gen-key', 'wafers test <test@127.0.0.1>', 'ed25519', 'sign', 'never'],
      {
        env: gpgEnv(),
      },
    )
    const keys = await execa('gpg', ['--list-keys', '--with-colons'], {env: gpgEnv()})
    fingerprint = /^fpr:+([\dA-F]{40}):/m.exec(keys.stdout)![1]
    const exported = (await execa('gpg', ['--export', fingerprint], {encoding: 'buffer', env: gpgEnv()})).stdout
    expect(exported.length, 'the exported public key').to.be.above(0)
    await fs.writeFile(path.join(trust, 'key.gpg'), exported)
    // Signatures live in a lookaside directory, as registries.d says for this registry.
    await fs.mkdir(path.join(trust, 'registries.d'))
    await fs.mkdir(path.join(trust, 'sigs'))
    const lookaside = `file://${path.join(trust, 'sigs')}`
    await fs.writeFile(
      path.join(trust, 'registries.d', 'test.yaml'),
      `docker:\n  ${registry.host}:\n    lookaside: ${lookaside}\n    lookaside-staging: ${lookaside}\n`,
    )
    // Nothing is accepted but images of this registry signed by the key.
    await fs.writeFile(
      path.join(trust, 'policy.json'),
      JSON.stringify({
        default: [{type: 'reject'}],
        transports: {
          docker: {[registry.host]: [{keyPath: path.join(trust, 'key.gpg'), keyType: 'GPGKeys', type: 'signedBy'}]},
        },
      }),
    )
    // An image made by umoci, pulled into box with the machine's policy (which accepts anything).
    const layout = path.join(box.root, 'layout')
    await execa('umoci', ['init', '--layout', layout])
    await execa('umoci', ['new', '--image', `${layout}:v1`])
    const bundle = path.join(box.root, 'bundle')
    await execa('umoci', ['unpack', '--image', `${layout}:v1`, bundle])
    await fs.mkdir(path.join(bundle, 'rootfs', 'srv'))
    await fs.writeFile(path.join(bundle, 'rootfs', 'srv', 'hello'), 'hello\n')
    await execa('umoci', ['repack', '--image', `${layout}:v1`, bundle])
    expect((await box.run(['pull', `oci:${layout}:v1`, 'app'])).exitCode).to.equal(0)
  })

  afterEach(async function () {
    await other?.cleanup()
    // The agent gpg started for the key's home would outlive the test.
    await execa('gpgconf', ['--kill', 'gpg-agent'], {env: gpgEnv(), reject: false})
    await fs.rm(trust, {force: true, recursive: true})
  })

  const policy = () => ['--policy', path.join(trust, 'policy.json'), '--registries.d', path.join(trust, 'registries.d')]

  it('pushes signed with --sign-by; a signed image pulls, an unsigned one is refused in one sentence, leaving nothing', async function () {
    // About one run in ten here, skopeo's own check of the signed image below fails with "Source
    // image rejected: No public keys imported": gpgme's import of the test's exported key into
    // skopeo's throwaway keyring reports no key, before wafers is involved (not reproduced with gpg
    // --import alone, nor avoided by dating the key in the past). Each retry starts afresh (new
    // key, stores and policy); a wafers fault fails every time.
    this.retries(2)
    const signed = `${registry.host}/trust/signed:1`
    const push = await box.run(
      [
        'push',
        'app',
        signed,
        '--tls-verify=false',
        '--sign-by',
        fingerprint,
        '--registries.d',
        path.join(trust, 'registries.d'),
      ],
      gpgEnv(),
    )
    expect(push.exitCode, push.stderr).to.equal(0)
    // skopeo itself, with the same policy, accepts what push signed.
    await execa('skopeo', [
      ...policy(),
      'copy',
      '--remove-signatures',
      '--src-tls-verify=false',
      `docker://${signed}`,
      `oci:${path.join(box.root, 'check')}:x`,
    ])

    // The same image copied by skopeo to another repository, without its signature.
    const bare = `${registry.host}/trust/bare:1`
    await execa('skopeo', [
      'copy',
      '--src-tls-verify=false',
      '--dest-tls-verify=false',
      '--remove-signatures',
      `docker://${signed}`,
      `docker://${bare}`,
    ])
    const unsigned = bare

    const before = await snapshot(other.root)
    const refused = await other.run(['pull', unsigned, '--tls-verify=false', ...policy()])
    expect(refused.exitCode).to.equal(1)
    expect(said(refused.stderr)).to.include(
      `the trust policy ${path.join(trust, 'policy.json')} refuses ${unsigned}: it requires a signature and the image has none; nothing was pulled.`,
    )
    expect(hasStackTrace(refused.stderr)).to.equal(false)
    expect(await snapshot(other.root)).to.deep.equal(before)

    const ok = await other.run(['pull', signed, 'web', '--tls-verify=false', '--json', ...policy()])
    expect(ok.exitCode, ok.stdout).to.equal(0)
    expect(
      await fs.readFile(
        other.data((JSON.parse(ok.stdout) as {layers: Array<{wafer: string}>}).layers[0].wafer, 'srv', 'hello'),
        'utf8',
      ),
    ).to.equal('hello\n')

    // Every layer of bare is already here: the policy is still asked, and still refuses.
    const wafers = await snapshot(other.wafers)
    const again = await other.run(['pull', bare, 'bare', '--tls-verify=false', ...policy()])
    expect(again.exitCode).to.equal(1)
    expect(said(again.stderr)).to.include('refuses').and.include('has none')
    expect(await snapshot(other.wafers)).to.deep.equal(wafers)
  })

  it('checks an OCI layout, read without skopeo, by the policy too, and says so of a missing policy file', async function () {
    const before = await snapshot(other.root)
    const layout = await other.run(['pull', `oci:${path.join(box.root, 'layout')}:v1`, ...policy()])
    expect(layout.exitCode).to.equal(1)
    expect(said(layout.stderr)).to.include('refuses').and.include('it rejects images from there')
    expect(hasStackTrace(layout.stderr)).to.equal(false)
    expect(await snapshot(other.root)).to.deep.equal(before)

    // A missing policy file is one sentence too.
    const missing = await other.run([
      'pull',
      `oci:${path.join(box.root, 'layout')}:v1`,
      '--policy',
      path.join(trust, 'nope.json'),
    ])
    expect(missing.exitCode).to.equal(1)
    expect(said(missing.stderr)).to.include('--policy').and.include('there is no such file')
    expect(await snapshot(other.root)).to.deep.equal(before)

    // A policy that accepts layouts lets it through, and a layout pulled so is the image.
    await fs.writeFile(
      path.join(trust, 'layouts.json'),
      JSON.stringify({default: [{type: 'reject'}], transports: {oci: {'': [{type: 'insecureAcceptAnything'}]}}}),
    )
    const accepted = await other.run([
      'pull',
      `oci:${path.join(box.root, 'layout')}:v1`,
      'app',
      '--policy',
      path.join(trust, 'layouts.json'),
    ])
    expect(accepted.exitCode, accepted.stderr).to.equal(0)
    expect((await other.run(['stack', 'app'])).exitCode).to.equal(0)
    expect(await fs.readFile(other.stack('app', 'srv', 'hello'), 'utf8')).to.equal('hello\n')
  })

  it('refuses a GPG key not in the keyring and a file that is no sigstore key, pushing nothing', async function () {
    const ref = `${registry.host}/trust/nokey:1`
    const push = await box.run(
      [
        'push',
        'app',
        ref,
        '--tls-verify=false',
        '--sign-by',
        '0123456789ABCDEF0123456789ABCDEF01234567',
        '--registries.d',
        path.join(trust, 'registries.d'),
      ],
      gpgEnv(),
    )
    expect(push.exitCode).to.equal(1)
    expect(said(push.stderr))
      .to.include('the GPG key 0123456789ABCDEF0123456789ABCDEF01234567 is not a secret key in the keyring')
      .and.include('nothing was pushed')
    expect(hasStackTrace(push.stderr)).to.equal(false)
    // A sigstore key that is not one: refused before anything is sent too.
    await fs.writeFile(path.join(trust, 'not-a-key'), 'not a key\n')
    const sigstore = await box.run([
      'push',
      'app',
      ref,
      '--tls-verify=false',
      '--sign-by-sigstore-private-key',
      path.join(trust, 'not-a-key'),
    ])
    expect(sigstore.exitCode).to.equal(1)
    expect(said(sigstore.stderr)).to.include('is not a sigstore private key').and.include('nothing was pushed')
    const inspect = await execa('skopeo', ['inspect', '--tls-verify=false', `docker://${ref}`], {reject: false})
    expect(inspect.exitCode).to.not.equal(0)
  })
})
