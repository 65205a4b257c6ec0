/**
 * Turns Ctrl-C (SIGINT) and SIGTERM into an AbortSignal for the duration of a command, so that
 * work under way can finish cleanly and nothing new starts. A second signal exits at once.
 */
export function interruptSignal(): {dispose(): void; signal: AbortSignal} {
  const controller = new AbortController()
  const handler = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(signal === 'SIGINT' ? 130 : 143)
    controller.abort()
    process.stderr.write(`\n${signal}: finishing what is under way, starting nothing new (again to quit now)\n`)
  }

  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
  return {
    dispose() {
      process.off('SIGINT', handler)
      process.off('SIGTERM', handler)
    },
    signal: controller.signal,
  }
}
