import {expect} from 'chai'
import {execa} from 'execa'
import {promises as fs} from 'node:fs'
import path from 'node:path'

import {buildWeb, busyboxBase, hasStackTrace, said, Sandbox, useSandbox} from '../helpers/sandbox.js'

const CORE_PATTERN = '/proc/sys/kernel/core_pattern'
/** A host sysfs file a RUN could flip if it reached sysfs read-write: whether printk stamps times. */
const PRINTK_TIME = '/sys/module/printk/parameters/time'

/** What a RUN writes where it tries to reach the host: harmless, and not what the host has. */
const FORGED_CORE_PATTERN = 'core.wafers-isolation-test'

/** The capabilities buildah's chroot isolation keeps (containers.conf's default_capabilities). */
const BUILDAH_CAPABILITIES = [
  'cap_chown',
  'cap_dac_override',
  'cap_fowner',
  'cap_fsetid',
  'cap_kill',
  'cap_net_bind_service',
  'cap_setfcap',
  'cap_setgid',
  'cap_setpcap',
  'cap_setuid',
  'cap_sys_chroot',
]

/** The capabilities a CapBnd mask from /proc/PID/status holds, as capsh (libcap) names them. */
async function decode(mask: string): Promise<string[]> {
  const {stdout} = await execa('capsh', [`--decode=${mask}`])
  return stdout
    .replace(/^0x[\da-f]+=/, '')
    .split(',')
    .sort()
}

describe('wafers build: a RUN cannot reach the host kernel (real nspawn, real overlays)', function () {
  let box: Sandbox
  let context: string
  let canaries: Record<string, string>
  useSandbox((created) => {
    box = created
  })

  beforeEach(async function () {
    this.timeout(120_000)
    context = await busyboxBase(box)
    canaries = {}
    for (const file of [CORE_PATTERN, PRINTK_TIME]) {
      canaries[file] = await fs.readFile(file, 'utf8')
    }
  })

  afterEach(async function () {
    // A test that failed because a RUN got through puts the host back as it was (each test checks).
    for (const [file, before] of Object.entries(canaries)) {
      if ((await fs.readFile(file, 'utf8')) !== before) await fs.writeFile(file, before)
    }
  })

  const build = async (file: string) => buildWeb(box, context, file)

  /** Builds FROM bb with `run` as step 2 and expects it to fail, naming the step, with no wafer made. */
  const refused = async (run: string, from = 'FROM bb\n') => {
    const {run: result} = await build(`${from}RUN ${run}\n`)
    const step = from.split('\n').length
    expect(result.exitCode, result.stderr).to.equal(1)
    expect(said(result.stderr)).to.match(
      new RegExp(`step ${step} \\(RUN .*\\) failed with exit code \\d+; no wafer was made for it\\.`),
    )
    expect(hasStackTrace(result.stderr)).to.equal(false)
    expect((await fs.readdir(box.wafers)).filter((entry) => entry !== '.links')).to.deep.equal(['bb'])
  }

  /** The host files the tests watch, as they are now. */
  const hostNow = async () =>
    Object.fromEntries(
      await Promise.all(Object.keys(canaries).map(async (file) => [file, await fs.readFile(file, 'utf8')])),
    )

  it('cannot mount a fresh procfs, and so cannot write kernel.core_pattern through one', async function () {
    await refused(`mkdir -p /p && mount -t proc proc /p && echo ${FORGED_CORE_PATTERN} > /p/sys/kernel/core_pattern`)
    expect(await hostNow()).to.deep.equal(canaries)
  })

  it("cannot write kernel.core_pattern through the container's /proc/sys", async function () {
    await refused(`echo ${FORGED_CORE_PATTERN} > ${CORE_PATTERN}`)
    expect(await hostNow()).to.deep.equal(canaries)
  })

  it('cannot mount sysfs, and so cannot write the host kernel through one', async function () {
    await refused('mkdir -p /s && mount -t sysfs sysfs /s && echo N > /s/module/printk/parameters/time')
    // Nor write the container's own /sys, which nspawn mounts read-only.
    await refused(`echo N > ${PRINTK_TIME}`)
    expect(await hostNow()).to.deep.equal(canaries)
  })

  it('cannot get CAP_SYS_ADMIN back in a user namespace of its own to mount procfs or sysfs there', async function () {
    // The host's /proc stays fully visible in nspawn's mount namespace (nspawn chroots), so a user
    // namespace with a PID namespace of its own would be let mount a fresh procfs, where the RUN,
    // still the host's root, writes the host's sysctls.
    await refused(
      `unshare -Urmpf sh -c 'mount -t proc p /proc && echo ${FORGED_CORE_PATTERN} > /proc/sys/kernel/core_pattern'`,
    )
    await refused("unshare -Urmn sh -c 'mount -t sysfs s /sys && echo N > /sys/module/printk/parameters/time'")
    expect(await hostNow()).to.deep.equal(canaries)
  })

  it('cannot mknod the block device the store lives on', async function () {
    const {dev} = await fs.stat(box.wafers)
    // The device of a store on tmpfs or overlayfs is no block device: then the first loop device.
    const [major, minor] =
      (dev >> 8) & 0xf_ff ? [(dev >> 8) & 0xf_ff, (dev & 0xff) | ((dev >> 12) & 0xf_ff_00)] : [7, 0]
    // nspawn's device policy may refuse opening it; the node alone is already too much.
    await refused(`mknod /disk b ${major} ${minor}`)
    expect(await hostNow()).to.deep.equal(canaries)
  })

  it("cannot read the layer's files by their host path, directly or through /proc/1/root", async function () {
    const secret = path.join(box.root, 'host-secret')
    await fs.writeFile(secret, 'host only\n')
    // The wafer the step stacks on, as the host names it: the RUN sees it only as its own root.
    const layerFile = box.data('bb', 'bin', 'busybox')
    for (const file of [secret, layerFile, `/proc/1/root${secret}`, `/proc/1/root${layerFile}`]) {
      await refused(`test -e ${file} || exit 3; cat ${file}`)
    }

    // Nor through a fresh procfs of its own (refused before any path is looked up).
    await refused(`unshare -Urmpf sh -c 'mount -t proc p /proc && cat /proc/1/root${secret}'`)
    expect(await fs.readFile(secret, 'utf8')).to.equal('host only\n')
    expect(await hostNow()).to.deep.equal(canaries)
  })

  it('shares the host network by default, as buildah does, and with --network none has only lo', async function () {
    const interfaces = (text: string) =>
      text
        .split('\n')
        .slice(2)
        .map((line) => line.split(':')[0].trim())
        .filter(Boolean)
        .sort()
    const file = 'FROM bb\nRUN cat /proc/net/dev > /net-dev\n'
    const shared = await buildWeb(box, context, file)
    expect(shared.run.exitCode, shared.run.stderr).to.equal(0)
    const read = async () => {
      const stacked = await box.run(['stack', 'web'])
      expect(stacked.exitCode, stacked.stderr).to.equal(0)
      const text = await fs.readFile(box.stack('web', 'net-dev'), 'utf8')
      expect((await box.run(['unstack', 'web'])).exitCode).to.equal(0)
      return interfaces(text)
    }

    expect(await read()).to.deep.equal(interfaces(await fs.readFile('/proc/net/dev', 'utf8')))
    const none = await buildWeb(box, context, file, '--network', 'none', '--no-cache')
    expect(none.run.exitCode, none.run.stderr).to.equal(0)
    expect(await read()).to.deep.equal(['lo'])
  })

  it('keeps only what buildah keeps, as root and as every USER, on every path wafers runs a step', async function () {
    // Each RUN reports its bounding set and whether it may make a user namespace. The plain RUN is
    // mounted by nspawn itself; a WORKDIR the image lacks, and every USER, make wafers mount the
    // step under /run/wafers; USER app is nspawn's --user (the image has a getent), USER 1234:1500
    // the host's busybox nsenter bound on /run.
    const report = (file: string) =>
      `RUN (grep CapBnd /proc/self/status; unshare -U true 2>/dev/null && echo userns || echo no-userns) > ${file}`
    const getent = [
      '#!/bin/sh',
      'case "$1" in',
      '  passwd) grep "^$2:" /etc/passwd ;;',
      '  group) grep "^$2:" /etc/group ;;',
      '  initgroups) echo "$2" ;;',
      '  *) exit 2 ;;',
      'esac',
      '',
    ].join('\n')
    await fs.writeFile(path.join(context, 'getent'), getent, {mode: 0o755})
    const file = [
      'FROM bb',
      report('/r-root'),
      'WORKDIR /made-here',
      report('/r-workdir'),
      'WORKDIR /',
      'COPY getent /usr/bin/getent',
      'RUN echo app:x:1500:1500::/home/app:/bin/sh >> /etc/passwd && echo app:x:1500: >> /etc/group && mkdir -p /home/app /r && chmod 1777 /r',
      'USER app',
      report('/r/app'),
      'USER 1234:1500',
      report('/r/numbers'),
      'USER root',
      '',
    ].join('\n')
    const {run} = await build(file)
    expect(run.exitCode, run.stderr).to.equal(0)
    const stacked = await box.run(['stack', 'web'])
    expect(stacked.exitCode, stacked.stderr).to.equal(0)
    const who = async (rel: string) => {
      const text = await fs.readFile(box.stack('web', rel), 'utf8')
      const mask = /CapBnd:\s*([\da-f]+)/.exec(text)?.[1] as string
      return {capabilities: await decode(mask), userns: text.trim().split('\n').at(-1)}
    }

    for (const rel of ['r-root', 'r-workdir', 'r/app', 'r/numbers']) {
      expect(await who(rel), rel).to.deep.equal({capabilities: BUILDAH_CAPABILITIES, userns: 'no-userns'})
    }

    expect(await hostNow()).to.deep.equal(canaries)
  })
})
