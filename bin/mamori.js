#!/usr/bin/env node
// The mamori CLI. Sources are TypeScript run through tsx's loader (esbuild transpiles once at load;
// run-time speed is the same as precompiled output) so a checkout runs without a build step.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../proxy/cli.ts');
process.exitCode = await main(process.argv.slice(2));
