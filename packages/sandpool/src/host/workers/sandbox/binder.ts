import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { createInterface } from 'node:readline';
import type { Writable } from 'node:stream';
import { findExecutable } from './support.js';

/**
 * One process, as root, that makes and removes the stage's binds, one request at a time in the
 * order asked. A key taking a spare cell waits for its folder's bind: spawned from the host,
 * `mount` cost a fork of the host's whole process and a wait for the signal of its exit
 * (12–30 ms under load for a system call of 20 µs). A request is lines, an operation then its
 * paths, read as data (never evaluated); its answer one line, `ok` or why not. The process
 * ends when its input does, with the host at the latest.
 *
 * Where perl is installed (Debian's perl-base is essential) and the syscall numbers of this
 * architecture are known, it is perl making the system calls itself: a bind is one mount(2),
 * where a shell forks and execs mount(8) (3-7 ms of a spare's take here, under load); else a
 * shell running mount(8).
 */
export interface MountServer {
  readonly file: string;
  readonly args: readonly string[];
}

/** mount(2) and umount2(2), for the arches Node ships for Linux. */
const SYSCALLS: Partial<Record<NodeJS.Architecture, { mount: number; umount2: number }>> = {
  x64: { mount: 165, umount2: 166 },
  arm64: { mount: 40, umount2: 39 },
};
/** mount(2)'s MS_BIND, and umount2(2)'s MNT_DETACH (`umount -l`: a dying cell may still hold a file). */
const MS_BIND = 4096;
const MNT_DETACH = 2;
/** Paths arrive as strings, so syscall() passes them as pointers; the numbers as integers (0: NULL). */
const PERL_SERVE = `$| = 1;
my ($mount, $umount2) = @ARGV;
while (defined(my $op = <STDIN>)) {
  chomp $op;
  my $done;
  if ($op eq 'bind') {
    chomp(my $source = <STDIN> // exit 1);
    chomp(my $target = <STDIN> // exit 1);
    $done = syscall($mount, $source, $target, 0, ${MS_BIND}, 0);
  } elsif ($op eq 'unbind') {
    chomp(my $target = <STDIN> // exit 1);
    $done = syscall($umount2, $target, ${MNT_DETACH});
  } else {
    exit 1;
  }
  print $done == 0 ? "ok\n" : "$!\n";
}`;

const SHELL_SERVE = `while IFS= read -r op; do
  case $op in
    bind) IFS= read -r source && IFS= read -r target && said=$(mount --bind -- "$source" "$target" 2>&1) ;;
    unbind) IFS= read -r target && said=$(umount -l -- "$target" 2>&1) ;;
    *) exit 1 ;;
  esac
  if [ $? -eq 0 ]; then echo ok; else printf '%s\\n' "$said" | tr '\\n' ' '; echo; fi
done`;

/** A shell running mount(8), which any host with mount has. */
export const SHELL_SERVER: MountServer = { file: 'sh', args: ['-c', SHELL_SERVE, 'sandpool-binder'] };

/** perl making the system calls where it can (see above), else the shell. */
export function mountServer(arch: NodeJS.Architecture = process.arch): MountServer {
  const perl = findExecutable('perl');
  const numbers = SYSCALLS[arch];
  if (perl === null || numbers === undefined) return SHELL_SERVER;
  return { file: perl, args: ['-e', PERL_SERVE, String(numbers.mount), String(numbers.umount2)] };
}

interface Pending {
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

/** A running shell and the requests it has yet to answer, in order. */
interface Shell {
  readonly input: Writable;
  readonly output: Socket;
  readonly pending: Pending[];
}

export class Binder {
  private shell: Shell | null = null;

  constructor(private readonly server: MountServer = mountServer()) {}

  /** Binds `source` at `target` (a folder that exists). */
  bind(source: string, target: string): Promise<void> {
    return this.ask(['bind', source, target]);
  }

  /** Detaches what is bound at `target`, lazily: a dying cell may still hold a file in it. */
  unbind(target: string): Promise<void> {
    return this.ask(['unbind', target]);
  }

  /** Its shell ends once it has answered what was asked; a later request starts another. */
  close(): void {
    this.shell?.input.end();
    this.shell = null;
  }

  private ask(lines: readonly string[]): Promise<void> {
    // A line break would end a path early and shift every request after it.
    if (lines.some((line) => line.includes('\n'))) {
      return Promise.reject(new Error(`cannot bind a path holding a line break: ${JSON.stringify(lines)}`));
    }
    const shell = this.shell ?? this.start();
    return new Promise((resolve, reject) => {
      // Held while it waits for an answer: a host whose only work is this bind must not exit under it.
      if (shell.pending.length === 0) shell.output.ref();
      shell.pending.push({ resolve, reject });
      shell.input.write(lines.map((line) => `${line}\n`).join(''));
    });
  }

  private start(): Shell {
    // The host's PATH (the shell finds mount by it), and nothing else: perl, run as root, reads PERL5OPT.
    const env = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };
    const child = spawn(this.server.file, this.server.args, { stdio: ['pipe', 'pipe', 'ignore'], env });
    const shell: Shell = {
      input: child.stdin as Writable,
      output: child.stdout as Socket,
      pending: [],
    };
    this.shell = shell;
    child.unref();
    shell.output.unref();
    shell.input.on('error', () => {});
    child.on('error', () => {});
    createInterface({ input: shell.output }).on('line', (line) => {
      const waiter = shell.pending.shift();
      if (shell.pending.length === 0) shell.output.unref();
      if (line === 'ok') waiter?.resolve();
      else waiter?.reject(new Error(`mount: ${line.trim() || 'failed'}`));
    });
    child.on('close', () => {
      if (this.shell === shell) this.shell = null;
      for (const waiter of shell.pending.splice(0)) waiter.reject(new Error('the stage’s mount shell ended'));
    });
    return shell;
  }
}
