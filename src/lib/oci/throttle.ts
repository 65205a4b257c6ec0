/** `report`, called at most four times a second: progress lines from every chunk would flood plain output. */
export function throttled(report: (line: string) => void): (line: string) => void {
  let last = 0
  return (line) => {
    const now = Date.now()
    if (now - last < 250) return
    last = now
    report(line)
  }
}
