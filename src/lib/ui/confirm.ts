/**
 * Asks `question` on `output` and reads one line from `input`: true only for "y" or "yes".
 * End of input counts as no.
 */
export async function confirm(
  question: string,
  streams: {input: NodeJS.ReadableStream; output: NodeJS.WritableStream} = {
    input: process.stdin,
    output: process.stderr,
  },
): Promise<boolean> {
  const {createInterface} = await import('node:readline/promises')
  const rl = createInterface({input: streams.input, output: streams.output, terminal: false})
  try {
    const answer = await Promise.race([
      rl.question(question),
      new Promise<string>((resolve) => {
        rl.once('close', () => resolve(''))
      }),
    ])
    return /^\s*y(es)?\s*$/i.test(answer)
  } finally {
    rl.close()
  }
}
