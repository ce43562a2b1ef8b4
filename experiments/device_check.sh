#!/usr/bin/env bash
# The GPU checks in one command, for a GPU machine that reaches no package index.
#
#   make device-wheels                 # here, with network: the wheels the GPU image lacks, into .whl/
#   bash experiments/device_check.sh   # there, from the repository root, .whl/ copied along
#   bash experiments/device_check.sh quick    # the follower's checks only (about 2 minutes)
#
# 1. The follower at scale (issue 20): 10,000 x 768 snapshots written one every 2 s as training on
#    the GPU would, the follower on the idle cores and its neighbour search on the GPU; t-SNE,
#    then PCA. Goal: max lag <= 2 frames (t-SNE), <= 1 (PCA).
# 2. experiments/bench_gpu.py: embedding and training throughput against the article's way, and
#    the article-scale run end to end, followed (the default), with its stage seconds.
# Each part writes its output to $OUT (default device-out/), and a part that fails or runs out
# of its time does not stop the next. About 9 minutes in all on an H200.
set -uo pipefail
OUT=${OUT:-device-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ftviz-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/ftviz-site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi -L || true; python3 -c "import torch, cleanlab, openTSNE, plotly; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"; } \
    2>&1 | tee "$OUT/machine.txt" || exit 1
timeout 150 python3 experiments/bench_live.py --skip-default --method tsne --every 2 --lead-in 3 --device cuda 2>&1 | tee "$OUT/live_tsne.txt"
timeout 90 python3 experiments/bench_live.py --skip-default --method pca --every 2 --lead-in 3 --device cuda 2>&1 | tee "$OUT/live_pca.txt"
[ "${1:-}" = quick ] && exit 0
timeout 330 python3 experiments/bench_gpu.py 2>&1 | tee "$OUT/bench_gpu.txt"
