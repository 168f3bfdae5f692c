#!/usr/bin/env node
/**
 * i6pnctl: the operator's CLI for i6pn. See `i6pnctl --help`, or
 * controller/program.ts for the commands.
 */
import { run } from './program.js';

process.exitCode = await run(process.argv);
