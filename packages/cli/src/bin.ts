#!/usr/bin/env node
import { run } from './run.js';

// exitCode rather than process.exit(): stdout may still be flushing into a pipe, and every
// pool is closed by now, so the process ends on its own.
process.exitCode = await run(process.argv.slice(2));
