/** One unit of work the progress display shows as a task: the shape seeders and hooks return too. */
export interface Step {
  /** Runs even after Ctrl-C, because it finishes (or undoes) what an earlier step began. */
  always?: boolean
  /**
   * Runs the step; `report` shows a line of progress under it. It may return the title to show
   * once it is done (say, with what it found).
   */
  run(report: (line: string) => void): Promise<string | void>
  /** A reason to skip the step, decided when its turn comes; undefined to run it. */
  skip?(): string | undefined
  title: string
}
