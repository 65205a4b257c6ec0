import {type ResultPromise, execa} from 'execa'

/** renameat2(2)'s number, for RENAME_EXCHANGE (Node has no renameat2). */
const RENAMEAT2: Partial<Record<string, number>> = {arm64: 276, x64: 316}

/**
 * Starts a process that, until stopped, keeps exchanging what `name` is, a real directory or a
 * symlink to `victim`, atomically (renameat2 RENAME_EXCHANGE, in a tight loop), as an attacker who
 * may write to the store would; what something deletes is made again. Perl is used because it
 * can make the system call and is on every Debian machine (perl-base is essential).
 */
export function swapInLoop(name: string, victim: string): {stop: () => Promise<void>} {
  const number = RENAMEAT2[process.arch]
  if (number === undefined) throw new Error(`no renameat2 number known for ${process.arch}`)
  const script = `
    my ($nr, $name, $victim) = @ARGV; my $other = "$name.swap";
    sub fill { for my $p ($name, $other) { next if -l $p || -e $p;
      if (grep { -l $_ } ($name, $other)) { mkdir $p } else { symlink $victim, $p } } }
    fill();
    while (1) { fill() if syscall($nr, -100, $name, -100, $other, 2) != 0 }`
  const child: ResultPromise = execa('perl', ['-e', script, String(number), name, victim], {reject: false})
  return {
    async stop() {
      child.kill('SIGKILL')
      await child
    },
  }
}
