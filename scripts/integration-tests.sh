#!/usr/bin/env bash
# The integration suites, two at a time: each suite has its own container prefix, network and port, so they do
# not see each other. faults.test.ts restarts the Docker daemon, which stops every container on the machine: it
# runs first, alone. Both runs always run; the exit status is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
mocha --timeout 600000 tests/integration/faults.test.ts
alone=$?
mocha --parallel --jobs 2 --timeout 600000 --ignore tests/integration/faults.test.ts 'tests/integration/**/*.test.ts'
together=$?
exit $((alone || together))
