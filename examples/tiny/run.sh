#!/usr/bin/env bash
# The main job, on a fresh machine: install hpcffn with its FFN stage code, make the tiny
# synthetic dataset, plan it, check every job script, run all seven stages, and print the
# status, the evaluation table and where the report (an HTML page with pictures) is.
#
#   bash examples/tiny/run.sh            # run on this machine with the local runner
#   bash examples/tiny/run.sh --slurm    # submit to the SLURM this machine talks to, and wait
#
# Everything it writes goes under examples/tiny/data/ and examples/tiny/work/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
mode="${1:-local}"
python="${PYTHON:-python3}"

echo "== installing hpcffn with the ffn and report extras"
"$python" -m pip install -q -e "${repo}[ffn,report]"

if [[ ! -d "$here/data/raw" || ! -d "$here/data/gt" ]]; then
  echo "== making the tiny dataset (64x128x128 TIF slices, white-background groundtruth)"
  "$python" "$here/make_data.py" --out "$here/data"
fi

echo "== planning"
hpcffn plan "$here/tiny.yaml"

case "$mode" in
  --slurm)
    echo "== checking every job script on its node (hpcffn check)"
    hpcffn check "$here/work"
    echo "== submitting to SLURM"
    hpcffn submit "$here/work"
    hpcffn status "$here/work" --watch
    ;;
  local)
    echo "== checking every job script here (hpcffn check --local)"
    hpcffn check "$here/work" --local
    echo "== running every stage on this machine (hpcffn run)"
    hpcffn run "$here/work"
    ;;
  *)
    echo "usage: bash examples/tiny/run.sh [--slurm]" >&2
    exit 2
    ;;
esac

echo "== status"
hpcffn status "$here/work"
echo "== evaluation and report (open the HTML file in a browser)"
hpcffn report "$here/work"
echo "== the stitched volume: $here/work/stitch/blobs.ome.zarr (OME-Zarr); look at it in neuroglancer with"
echo "   pip install '${repo}[view]' && hpcffn view $here/work"
