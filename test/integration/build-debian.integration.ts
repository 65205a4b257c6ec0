import {expect} from 'chai'
import {promises as fs} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import {Sandbox, nspawnIn, requireMounts} from '../helpers/sandbox.js'

const plugin = fileURLToPath(new URL('../../plugins/debian', import.meta.url))

describe('wafers build on a debootstrap base (real apt-get from the host mirror)', function () {
  let box: Sandbox

  beforeEach(async function () {
    requireMounts(this)
    box = await Sandbox.create()
    const run = await box.run(['plugins', 'link', '--no-install', plugin])
    expect(run.exitCode, run.stderr).to.equal(0)
  })

  afterEach(async function () {
    await box?.cleanup()
  })

  it('installs hello with apt-get in a RUN step; hello runs in the stacked result', async function () {
    this.timeout(30 * 60 * 1000)
    const create = await box.run(['create', 'debian', '--seed', 'debootstrap', '--', 'bookworm', '--variant=minbase'])
    expect(create.exitCode, create.stderr.split('\n').slice(-5).join('\n')).to.equal(0)
    const context = path.join(box.root, 'context')
    await fs.mkdir(context)
    await fs.writeFile(
      path.join(context, 'Containerfile'),
      [
        'FROM debian',
        'ENV DEBIAN_FRONTEND=noninteractive',
        'RUN apt-get update && apt-get install -y --no-install-recommends hello && rm -rf /var/lib/apt/lists/*',
        // A user the image lists runs with its home and supplementary groups (nspawn --user, via the
        // image's getent).
        'RUN useradd --create-home --groups audio app',
        'USER app',
        'RUN id -un > /home/app/who && id -Gn >> /home/app/who && echo "$HOME" >> /home/app/who',
        'USER root',
        'CMD ["hello"]',
        '',
      ].join('\n'),
    )
    const build = await box.run(['build', '-t', 'greeter', '--json', context])
    expect(build.exitCode, build.stdout.slice(-2000)).to.equal(0)
    const steps = JSON.parse(build.stdout).steps as Array<{cached: boolean; instruction: string; wafer: null | string}>
    const layer = steps[2].wafer as string
    expect(await fs.stat(box.data(layer, 'usr', 'bin', 'hello')))
      .to.have.property('size')
      .above(0)
    // Only what apt made: nspawn's bind targets and the host's resolver stay out of the layer.
    for (const file of ['etc/resolv.conf', 'etc/localtime', 'etc/hostname', 'var/log/journal']) {
      expect(
        await fs.lstat(box.data(layer, file)).then(
          () => file,
          () => undefined,
        ),
      ).to.equal(undefined)
    }

    expect(await fs.readFile(box.data(steps[5].wafer as string, 'home', 'app', 'who'), 'utf8')).to.equal(
      'app\napp audio\n/home/app\n',
    )

    // Unchanged: nothing runs again.
    const again = await box.run(['build', '-t', 'greeter', '--json', context])
    expect(again.exitCode, again.stdout.slice(-2000)).to.equal(0)
    expect((JSON.parse(again.stdout).steps as Array<{cached: boolean}>).every((step) => step.cached)).to.equal(true)

    expect((await box.run(['stack', 'greeter'])).exitCode).to.equal(0)
    const hello = await nspawnIn(box.stack('greeter'), ['hello'])
    expect(hello.exitCode, hello.stderr).to.equal(0)
    expect(hello.stdout.trim()).to.equal('Hello, world!')
  })
})
