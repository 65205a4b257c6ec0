import {WafersError} from '../errors.js'
import type {Step} from '../steps.js'

/** How progress is shown: a live task list, plain lines, or nothing (for --json). */
export type ProgressMode = 'interactive' | 'plain' | 'silent'

/**
 * The mode for this run: live only on a terminal outside CI, silent when output is for scripts.
 * Progress goes to stderr in every mode, so stdout carries only results.
 */
export function progressMode(options: {
  columns?: number
  env?: NodeJS.ProcessEnv
  json: boolean
  tty?: boolean
}): ProgressMode {
  const env = options.env ?? process.env
  if (options.json) return 'silent'
  const tty = options.tty ?? Boolean(process.stderr.isTTY)
  const ci = env.CI !== undefined && env.CI !== '' && env.CI !== 'false' && env.CI !== '0'
  // A terminal that reports no width (some serial consoles, script(1) without a size) would get a
  // live list wrapped at one character per line: plain lines need no width.
  const columns = options.columns ?? (tty ? process.stderr.columns : 0)
  return tty && columns > 0 && !ci && env.TERM !== 'dumb' ? 'interactive' : 'plain'
}

/** One unit of a batch: a named list of steps that succeeds or fails as a whole. */
export interface BatchItem {
  name: string
  steps: Step[]
  title: string
}

/** How a batch item ended. */
export interface BatchOutcome {
  error?: Error
  name: string
  state: 'done' | 'failed' | 'not started'
}

/**
 * Runs `steps` in order with a listr2 task list; the first failure stops the rest and is rethrown.
 * Once `signal` is aborted (Ctrl-C), no further step starts.
 */
export async function runSteps(steps: Step[], mode: ProgressMode, signal?: AbortSignal): Promise<void> {
  const list = await listr(tasksOf(steps, signal), mode, true)
  await list.run()
}

/**
 * Runs each item's steps, one item after another; a failed item is reported and the others still
 * run. Once `signal` is aborted (Ctrl-C), the item under way finishes and no other starts.
 */
export async function runBatch(items: BatchItem[], mode: ProgressMode, signal?: AbortSignal): Promise<BatchOutcome[]> {
  const outcomes: BatchOutcome[] = items.map((item) => ({name: item.name, state: 'not started'}))
  const started = new Set<number>()
  const list = await listr(
    items.map((item, index) => ({
      skip: () => (signal?.aborted ? 'interrupted' : false),
      // The item's steps are subtasks that listr2 runs and renders under it (returned, not run here:
      // a subtask list run on its own would start a second renderer).
      task(_: unknown, task: {newListr: (tasks: unknown[], options: object) => unknown}) {
        started.add(index)
        const failed = (error: Error) => {
          outcomes[index] = {error, name: item.name, state: 'failed'}
        }

        return task.newListr(tasksOf(item.steps, undefined, failed), {exitOnError: true})
      },
      title: item.title,
    })),
    mode,
    false,
  )
  await list.run().catch(() => {})
  for (const index of started) if (outcomes[index].state !== 'failed') outcomes[index].state = 'done'
  return outcomes
}

function tasksOf(steps: Step[], signal?: AbortSignal, failed?: (error: Error) => void) {
  return steps.map((step) => ({
    skip: step.skip ? () => step.skip?.() ?? false : undefined,
    async task(_: unknown, task: {output: string; title: string}) {
      if (signal?.aborted && !step.always) throw new WafersError(`interrupted before: ${step.title}.`, {exit: 130})
      try {
        const done = await step.run((line) => {
          task.output = line
        })
        if (done) task.title = done
      } catch (error) {
        failed?.(error as Error)
        throw error
      }
    },
    title: step.title,
  }))
}

async function listr(tasks: object[], mode: ProgressMode, exitOnError: boolean) {
  const {Listr, ListrLogger, ProcessOutput} = await import('listr2')
  const logger = new ListrLogger({processOutput: new ProcessOutput(process.stderr, process.stderr)})
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- listr2's task type is generic over a context wafers does not use
  return new Listr(tasks as any[], {
    collectErrors: false,
    exitOnError,
    registerSignalListeners: false,
    renderer: mode === 'interactive' ? 'default' : mode === 'plain' ? 'simple' : 'silent',
    rendererOptions: {logger},
  })
}

/** The error that ends a batch with failures or an interruption, saying which item ended how. */
export function batchError(verb: string, outcomes: BatchOutcome[]): WafersError | undefined {
  const names = (state: BatchOutcome['state']) =>
    outcomes.filter((outcome) => outcome.state === state).map((outcome) => outcome.name)
  const [done, failed, skipped] = [names('done'), names('failed'), names('not started')]
  if (skipped.length > 0) {
    return new WafersError(
      `interrupted: ${verb} ${done.join(', ') || 'none'}; failed ${failed.join(', ') || 'none'}; not started ${skipped.join(', ')}.`,
      {exit: 130},
    )
  }

  if (failed.length > 0) return new WafersError(`${failed.length} of ${outcomes.length} failed: ${failed.join(', ')}.`)
  return undefined
}
