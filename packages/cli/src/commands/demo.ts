import type { Command } from 'commander';
import { runDemo } from '../demo.js';
import type { Io } from '../io.js';

export function registerDemo(program: Command, io: Io): void {
  program
    .command('demo')
    .description('show per-key isolation, snapshots and LRU eviction in a throwaway folder')
    .action(() => runDemo(io));
}
