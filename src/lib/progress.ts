import type {Step} from './steps.js'

/** How progress is shown: a live task list, plain lines, or nothing (for --json). */
export type ProgressMode = 'interactive' | 'plain' | 'silent'

/**
 * The mode for this run: live only on a terminal outside CI, silent when output is for scripts.
 * Progress goes to stderr in every mode, so stdout carries only results.
 */
export function progressMode(options: {env?: NodeJS.ProcessEnv; json: boolean; tty?: boolean}): ProgressMode {
  const env = options.env ?? process.env
  if (options.json) return 'silent'
  const tty = options.tty ?? Boolean(process.stderr.isTTY)
  const ci = env.CI !== undefined && env.CI !== '' && env.CI !== 'false' && env.CI !== '0'
  return tty && !ci && env.TERM !== 'dumb' ? 'interactive' : 'plain'
}

/** Runs `steps` in order with a listr2 task list; the first failure stops the rest and is rethrown. */
export async function runSteps(steps: Step[], mode: ProgressMode): Promise<void> {
  const {Listr, ListrLogger, ProcessOutput} = await import('listr2')
  const logger = new ListrLogger({processOutput: new ProcessOutput(process.stderr, process.stderr)})
  const list = new Listr(
    steps.map((step) => ({
      skip: step.skip ? () => step.skip?.() ?? false : undefined,
      async task(_: unknown, task: {output: string; title: string}) {
        const done = await step.run((line) => {
          task.output = line
        })
        if (done) task.title = done
      },
      title: step.title,
    })),
    {
      collectErrors: false,
      exitOnError: true,
      registerSignalListeners: false,
      renderer: mode === 'interactive' ? 'default' : mode === 'plain' ? 'simple' : 'silent',
      rendererOptions: {logger},
    },
  )
  await list.run()
}
