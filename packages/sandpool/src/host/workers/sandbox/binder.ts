import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { createInterface } from 'node:readline';
import type { Writable } from 'node:stream';

/**
 * One shell, as root, that makes and removes the stage's binds, one request at a time in the
 * order asked. A key taking a spare cell waits for its folder's bind: spawned from the host,
 * `mount` cost a fork of the host's whole process and a wait for the signal of its exit
 * (12–30 ms under load for a system call of 20 µs); from this shell, one exec. A request is
 * lines, an operation then its paths, read as data (never evaluated); its answer one line,
 * `ok` or what mount said. The shell ends when its input does, with the host at the latest.
 */
const SERVE = `while IFS= read -r op; do
  case $op in
    bind) IFS= read -r source && IFS= read -r target && said=$(mount --bind -- "$source" "$target" 2>&1) ;;
    unbind) IFS= read -r target && said=$(umount -l -- "$target" 2>&1) ;;
    *) exit 1 ;;
  esac
  if [ $? -eq 0 ]; then echo ok; else printf '%s\\n' "$said" | tr '\\n' ' '; echo; fi
done`;

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
    const child = spawn('sh', ['-c', SERVE, 'sandpool-binder'], { stdio: ['pipe', 'pipe', 'ignore'] });
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
