#!/usr/bin/env bash
# The whole GPU check in one command on a bare, lent GPU machine (results/benchmarks.md, "The device check").
#
#   bash scripts/device_check.sh [STAGE ...]    STAGE: env tests optim bench precision grid (default: all, in order)
#
# Beside the repo it needs datasets/cifar10-jpeg.tar.gz (unpacked here into datasets/cifar10-jpeg/ once per machine)
# and .whl/ (scripts/device_bundle.sh makes both), carried:
#   run(command="bash scripts/device_check.sh", carry=["datasets/cifar10-jpeg.tar.gz", ".whl"], timeout_s=590)
# Everything it keeps goes to $OUT (the device tool's folder; outputs/device_check otherwise), 8 files at most:
#   device_check.log, bench_optimizers.json, bench.json, precision.md, precision.json, precision_runs.tar.gz,
#   grid_WINDOW.tar.gz (WINDOW: the window or part that ran), stages.json
# Stages:
#   env        GPU, driver, Python and torch versions
#   tests      the CUDA cases of the exactness tests: every optimizer and the fused pack update (tests/test_optimizers.py,
#              test_fused.py), every route's members against their single runs in float64 (test_packed.py), and a
#              pack's step under CUDA graphs against eager (test_compile.py)
#   optim      scripts/bench_optimizers.py: every optimizer's step, and the fused update of packs of 12 and 24
#   bench      scripts/benchmark.py: reference, single run eager and compiled, packs of 4/12/24 on every route,
#              a compiled pack of 24, 4 concurrent single-run processes, then a profile of 5 steps of each
#              (device busy share, kernels and host ops per step, costliest ops; BENCH_ARGS replaces the defaults)
#   precision  experiment=precision_check (fp32 vs tf32 vs bf16, 2 methods x 4 seeds, 3 epochs) on the fastest
#              eager route the benchmark measured for 12 members; scripts/precision_check.py judges it
#   grid       one window of the full-scale experiments (GRID_WINDOW, scripts/full_scale.py; default blog-s0, one
#              seed of the post's grid: 24 runs x 50 epochs, a pack of 24; or a part of one, WINDOW.IofN) on the
#              fastest route and compile mode measured for its pack size (GRID_ROUTE, GRID_COMPILE, GRID_PRECISION
#              override; the config's precision, fp32, otherwise); a window that does not fit in what is left at
#              the measured rates runs as part 1 of the fewest parts that fit; skipped when nothing fits. Rates
#              from GRID_BENCH (e.g. a committed results/benchmark_cuda/*.json), else this command's bench.json,
#              else the one an earlier command left on this still-warm machine ($WORK/bench.json); GRID_NEEDS_S
#              replaces the estimate
# Each stage runs only if time is left before DEADLINE_S (default 540 s after the start); a stage that fails or
# runs out of time is recorded in stages.json and the next one goes on.
# A dry run of the plumbing on a CPU (what tests/test_device_check.py does): DEVICE=cpu, TESTS_SELECT, BENCH_ARGS,
# OPTIM_ARGS (added to bench_optimizers.py's),
# RUN_ARGS (Hydra overrides added to the precision and grid sweeps, e.g. a data subset and one epoch), and
# PRECISION_ARGS / GRID_ARGS (added to one of them, e.g. a smaller grid), PRECISION_NEEDS_S / GRID_NEEDS_S (the seconds
# a stage needs, in place of its estimate from the benchmark's rates), DATA_ARCHIVE / DATA_DIR (the carried archive and
# where it is unpacked).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-540}
OUT=${OUT:-outputs/device_check}
WORK=${WORK:-/tmp/dnm_device_check}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/device_check.log") 2>&1
TEE_PID=$!
STAGES=${*:-env tests optim bench precision grid}
STATUS="$WORK/stages.txt"
: > "$STATUS"

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( DEADLINE_S - $(elapsed) )); }
say() { echo "=== $(date -u +%H:%M:%S) (+$(elapsed)s) $*"; }
record() { echo "$1 $2 $(elapsed)" >> "$STATUS"; say "$1: $2"; }
# run_stage NAME SECONDS_NEEDED COMMAND...: runs COMMAND under a timeout of what is left, if SECONDS_NEEDED fit.
run_stage() {
    local name=$1 need=$2
    shift 2
    if [ "$(left)" -lt "$need" ] || [ "$(left)" -lt 6 ]; then  # timeout 0 would mean no limit at all
        record "$name" "skipped (needs ${need}s, $(left)s left)"
        return 1
    fi
    say "$name (up to $(( $(left) - 5 ))s)"
    timeout --signal=INT --kill-after=10 $(( $(left) - 5 )) "$@"
    local rc=$?
    if [ $rc -eq 0 ]; then record "$name" ok; else record "$name" "failed (exit $rc)"; fi
    return $rc
}
# best_eager_route K: the route of the fastest measured eager pack of K members in this command's bench.json, else
# in the one an earlier command left on this still-warm machine.
best_eager_route() {
    local bench="$OUT/bench.json"
    [ -f "$bench" ] || bench="$WORK/bench.json"
    python3 - "$bench" "$1" <<'PY' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
packs = [(r["images_per_s"][n]["median"], p["route"]) for n, p in r["pipelines"].items()
         if p["kind"] == "pack" and str(p["members"]) == sys.argv[2] and not p["compile"] and n in r["images_per_s"]]
if packs:
    print(max(packs)[1])
PY
}

# --- the machine has torch but not the repo's other needs: install the carried wheels beside it
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
        || { echo "error: installing the carried wheels failed; make them with scripts/device_bundle.sh"; exit 2; }
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The copy sent here has no git history of its own: the commit every summary and JSON records comes from the
# stamp device_bundle.sh wrote (with -dirty when a file differs from it).
STAMP=${SOURCE_STAMP:-.whl/source_stamp.json}
if [ -f "$STAMP" ]; then
    DNM_GIT_COMMIT=$(python3 scripts/source_stamp.py check "$STAMP") && export DNM_GIT_COMMIT \
        || { echo "error: the source stamp $STAMP cannot be read; make it again with scripts/device_bundle.sh"; exit 2; }
    echo "code: $DNM_GIT_COMMIT (from $STAMP)"
else
    echo "warning: no source stamp at $STAMP (scripts/device_bundle.sh writes it); commits recorded come from git here"
fi
# The CIFAR-10 copy travels as one archive (scripts/dataset_archive.py says why). A warm machine keeps what an
# earlier command unpacked; a bad archive fails only the stages that read real data.
DATA_ARCHIVE=${DATA_ARCHIVE:-datasets/cifar10-jpeg.tar.gz}
DATA_DIR=${DATA_DIR:-$PWD/datasets/cifar10-jpeg}
if [ -z "${DNM_DATA_ROOT:-}" ] && [ ! -d "$DATA_DIR" ] && [ -f "$DATA_ARCHIVE" ]; then
    python3 scripts/dataset_archive.py unpack "$DATA_ARCHIVE" "$DATA_DIR" \
        || echo "warning: no CIFAR-10 copy here; the stages that train on it will fail, the others go on"
fi
export DNM_DATA_ROOT=${DNM_DATA_ROOT:-$DATA_DIR}
export DNM_CACHE_DIR="$WORK/cache" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" WANDB_MODE=disabled PYTHONUNBUFFERED=1
RUNS="$WORK/outputs"
DEVICE=${DEVICE:-cuda}
# shellcheck disable=SC2206
# No checkpoints: nothing outlives the machine, so no later window could resume from one.
COMMON=(logger=none trainer.progress=false trainer.checkpoint=false "output_root=$RUNS" ${RUN_ARGS:-})

for stage in $STAGES; do
    case $stage in
    env)
        say env
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        python3 -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, \
torchvision.__version__, torch.cuda.get_device_name(0), torch.backends.cudnn.version())"
        echo "commit recorded: ${DNM_GIT_COMMIT:-$(python3 -c 'from experiments.run_info import git_commit; print(git_commit())')}"
        echo "data: $DNM_DATA_ROOT ($(find "$DNM_DATA_ROOT" -type f 2>/dev/null | wc -l) files)"
        record env ok
        ;;
    tests)
        # Not -x: one GPU call should report every CUDA case, not stop at the first.
        run_stage tests 60 python3 -m pytest -q -p no:cacheprovider tests/test_fused.py tests/test_optimizers.py \
            tests/test_packed.py tests/test_compile.py -k "${TESTS_SELECT:-cuda}"
        ;;
    optim)
        run_stage optim 30 python3 scripts/bench_optimizers.py --device "$DEVICE" --packs 12,24 \
            --json "$OUT/bench_optimizers.json" ${OPTIM_ARGS:-}
        ;;
    bench)
        # shellcheck disable=SC2206
        args=(${BENCH_ARGS:---ks 4,12,24 --routes loop,streams,vmap,grouped --compile reduce-overhead
              --packs 24:grouped:reduce-overhead --processes 4 --magnitude-stats-every 100 --steps 20 --warmup 5
              --rounds 2 --min-time 1 --profile})
        run_stage bench 120 python3 scripts/benchmark.py --device "$DEVICE" "${args[@]}" --json "$OUT/bench.json"
        # The device tool empties $OUT before each command; a next command on the still-warm machine finds it here.
        [ -f "$OUT/bench.json" ] && cp "$OUT/bench.json" "$WORK/bench.json"
        ;;
    precision)
        route=${PRECISION_ROUTE:-$(best_eager_route 12)}
        # Its three packs of 8 at the rate measured for 8 members (30 s of start-up each: eager, data cached).
        bench="$OUT/bench.json"
        [ -f "$bench" ] || bench="$WORK/bench.json"
        need=${PRECISION_NEEDS_S:-$(python3 scripts/full_scale.py estimate precision_check --bench "$bench" \
            --packed-init own --start-s 30 2>/dev/null || echo 240)}
        say "precision: route ${route:-auto}, estimate ${need}s"
        run_stage precision "$need" python3 -m experiments.train -m experiment=precision_check launcher=packed \
            hydra.launcher.packed_init=own "hydra.launcher.route=${route:-auto}" "${COMMON[@]}" ${PRECISION_ARGS:-}
        if [ -d "$RUNS/sweeps/precision_check" ]; then
            python3 scripts/precision_check.py "$RUNS/sweeps/precision_check" -o "$OUT/precision.md" \
                --json "$OUT/precision.json"
            tar -czf "$OUT/precision_runs.tar.gz" -C "$RUNS/sweeps" --exclude='*.pt' --exclude=wandb precision_check
        fi
        ;;
    grid)
        # One window of the full-scale experiments (scripts/full_scale.py; blog-s0: one seed of the post's grid),
        # or, when it does not fit in what is left at the rates measured, part 1 of the fewest parts that fit.
        bench=${GRID_BENCH:-}
        for found in "$OUT/bench.json" "$WORK/bench.json"; do  # this command's, else an earlier one's here
            [ -n "$bench" ] || [ ! -f "$found" ] || bench=$found
        done
        if [ -n "$bench" ] && [ ! -f "$bench" ]; then
            record grid "failed (GRID_BENCH=$bench is not there; commit it first or leave GRID_BENCH out)"
            continue
        fi
        if ! plan=$(python3 scripts/full_scale.py device-plan "${GRID_WINDOW:-blog-s0}" ${bench:+--bench "$bench"} \
                --seconds $(( $(left) - 5 ))); then
            record grid "failed (window ${GRID_WINDOW:-blog-s0}: see the error above)"
            continue
        fi
        eval "$plan"  # window overrides sweep images runs route mode rate need
        route=${GRID_ROUTE:-$route}
        mode=${GRID_COMPILE:-$mode}
        need=${GRID_NEEDS_S:-${need:-0}}
        say "grid: window $window ($overrides, $runs runs, $(( images / 1000000 )) M images), route ${route:-auto}, compile ${mode:-false}, ${rate:-unmeasured} img/s for its packs${bench:+ (from $bench)}, estimate ${need}s"
        # shellcheck disable=SC2086
        run_stage grid "$need" python3 -m experiments.train -m $overrides launcher=packed \
            "hydra.launcher.route=${route:-auto}" "trainer.compile=${mode:-false}" \
            ${GRID_PRECISION:+trainer.precision=$GRID_PRECISION} "${COMMON[@]}" ${GRID_ARGS:-}
        if [ -d "$RUNS/sweeps/$sweep" ]; then
            # Brought home with: python scripts/full_scale.py merge grid_WINDOW.tar.gz
            tar -czf "$OUT/grid_$window.tar.gz" -C "$RUNS/sweeps" --exclude='*.pt' --exclude=wandb "$sweep"
        fi
        ;;
    *)
        echo "error: unknown stage $stage; choose from env tests optim bench precision grid"
        exit 2
        ;;
    esac
done

python3 - "$STATUS" "$OUT/stages.json" <<'PY'
import json, sys
rows = [line.split(" ", 1) for line in open(sys.argv[1]) if line.strip()]
stages = [{"stage": name, "result": rest.rsplit(" ", 1)[0], "at_s": int(rest.rsplit(" ", 1)[1])} for name, rest in rows]
json.dump(stages, open(sys.argv[2], "w"), indent=2)
for s in stages:
    print(f"{s['stage']:<10} {s['result']:<40} at {s['at_s']} s")
PY
say "done; files in $OUT"
ls -la "$OUT"
# The log's last lines are tee's to write: let it finish before the device tool collects $OUT.
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null || true
