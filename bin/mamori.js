#!/usr/bin/env node
// The mamori CLI. Sources are TypeScript run through tsx's loader (esbuild transpiles once at load) so a
// checkout runs without a build step. Run-time speed is that of precompiled output but for one thing: esbuild
// keeps function names, which costs a property definition per closure made, so hot paths avoid making closures
// per statement (docs/benchmarks.md, "Fourth round").
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../proxy/cli.ts');
process.exitCode = await main(process.argv.slice(2));
