#!/usr/bin/env bash
# Builds everything, then runs every test (unit, property and real-namespace tests; they need root).
# Ends with one line: "tests: N passed, N failed[, N skipped]", counted from the test results.
set -uo pipefail
cd "$(dirname "$0")"
if ! ./build.sh; then
  echo "build failed"
  echo "tests: 0 passed, 1 failed"
  exit 1
fi
# A CNI client nobody here wrote (libcni) for the end-to-end client test; built offline from Debian's sources.
scripts/real-clients/build-libcni-client.sh >/dev/null || echo "warning: libcni client did not build; its test will skip"
results=.tmp/test-results
rm -rf "$results"
dotnet test tests/Weft.Tests/Weft.Tests.csproj -c Release -nologo \
  --logger "trx;LogFileName=weft.trx" --logger "console;verbosity=normal" --results-directory "$results" "$@"
rc=$?
python3 scripts/count-trx.py "$results"
counted=$?
[ $rc -eq 0 ] && [ $counted -eq 0 ] || exit 1
