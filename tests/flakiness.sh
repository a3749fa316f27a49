#!/usr/bin/env bash
# Runs tests again and again, each run in a fresh Python process, and counts the failures: a check that
# tests depending on random numbers, timing or ordering pass every time, not just usually.
#
#   tests/flakiness.sh [-n RUNS] [TEST ...]
#
# TEST is anything pytest accepts (a file, a node id, `-k` is not supported); without any, the tests
# most exposed to chance are run. RUNS defaults to 20. The interpreter is $PYTHON, else .venv/bin/python,
# else python3. Exits 1 if any run failed; the output of failed runs is kept under $TMPDIR.
set -u
cd "$(dirname "$0")/.."

runs=20
if [ "${1:-}" = "-n" ]; then
    runs=$2
    shift 2
fi
if [ $# -eq 0 ]; then
    set -- \
        tests/unit/trainer/test_cpu_depthwise.py \
        tests/unit/operator/test_status_scheduling.py \
        tests/contract/test_pods.py::test_pod_succeeds_and_goes_through_running \
        tests/integration/operator/test_operator_kopf.py::test_operator_restart_mid_job_duplicates_nothing \
        tests/integration/operator/test_operator_kopf.py::test_gang_job_without_volcano_says_why_then_recovers
fi
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
logs=$(mktemp -d "${TMPDIR:-/tmp}/flakiness.XXXXXX")

status=0
for test in "$@"; do
    failed=0
    start=$(date +%s)
    for i in $(seq 1 "$runs"); do
        log="$logs/$(echo "$test" | tr '/:[]' '____')-$i.log"
        if "$python" -m pytest -q -p no:cacheprovider "$test" >"$log" 2>&1; then
            rm -f "$log"
        else
            failed=$((failed + 1))
            echo "  run $i of $test failed: $log ($(tail -n 1 "$log"))"
        fi
    done
    echo "$test: $failed failed of $runs runs ($(($(date +%s) - start)) s, load $(cut -d' ' -f1-3 /proc/loadavg))"
    [ "$failed" -eq 0 ] || status=1
done
[ "$status" -eq 0 ] && rmdir "$logs" 2>/dev/null
exit "$status"
