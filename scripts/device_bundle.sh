#!/usr/bin/env bash
# Prepares, on this (development) machine, what scripts/device_check.sh needs on a bare GPU machine:
#   datasets/cifar10-jpeg.tar.gz  ../shared/datasets/cifar10-jpeg as one archive (19 MiB for the folders' 52.7 MiB:
#                           the JPEGs share their headers; scripts/dataset_archive.py); datasets/ is git-ignored.
#                           device_check.sh unpacks it there, once per machine
#   .whl/                   wheels of the Python packages that machine lacks (hydra-core, omegaconf, antlr4, the
#                           joblib launcher, and joblib: launcher=joblib needs 1.4, the image's may be older), for
#                           its Python 3.12; .whl/ is git-ignored. wandb does not fit the 64 MiB that travel, so
#                           runs there use logger=none.
#   .whl/source_stamp.json  HEAD's commit and file hashes (scripts/source_stamp.py): the copy sent there has no
#                           git history of its own, so this is how its results name the commit. Run this
#                           script again after every commit that is to run there.
# Then, with the device tool:
#   run(command="bash scripts/device_check.sh", carry=["datasets/cifar10-jpeg.tar.gz", ".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SRC=${DNM_SHARED_CIFAR10:-../shared/datasets/cifar10-jpeg}
ARCHIVE=datasets/cifar10-jpeg.tar.gz
# Packed again whenever the shared copy has changed since (ARCHIVE.source records what it was packed from).
if [ ! -d "$SRC/train" ]; then
    [ -f "$ARCHIVE" ] || { echo "error: no CIFAR-10 image folders at $SRC; set DNM_SHARED_CIFAR10" >&2; exit 2; }
    echo "warning: no CIFAR-10 image folders at $SRC to check $ARCHIVE against; using it as it is"
elif ! "$PY" scripts/dataset_archive.py fresh "$SRC" "$ARCHIVE"; then
    "$PY" scripts/dataset_archive.py pack "$SRC" "$ARCHIVE"
fi
mkdir -p .whl
# Pure-Python packages: any platform's wheel works there.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py -d .whl \
    hydra-core==1.3.2 omegaconf==2.3.0 hydra-joblib-launcher==1.2.0 joblib==1.6.0
# antlr4's runtime (needed by omegaconf) is published as a source archive only: build its wheel here.
ls .whl/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 || "$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
"$PY" scripts/source_stamp.py write .whl/source_stamp.json
du -sh --apparent-size "$ARCHIVE" .whl
# What travels: the tracked and untracked-not-ignored files plus the two carried paths, at most 64 MiB.
bytes() { du -cb --apparent-size "$@" 2>/dev/null | tail -1 | cut -f1; }
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb --apparent-size 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
total=$(( tree + $(bytes "$ARCHIVE") + $(bytes .whl) ))
echo "travels: $(( total / 1048576 )) MiB of 64 (checkout $(( tree / 1048576 )) MiB)"
if [ "$total" -gt $(( 64 * 1048576 )) ]; then
    echo "error: that is over the device tool's 64 MiB; move large untracked files out of the checkout" >&2
    exit 2
elif [ "$total" -gt $(( 60 * 1048576 )) ]; then
    echo "warning: within 4 MiB of the device tool's 64 MiB limit"
fi
