#!/usr/bin/env bash
# The accelerator check: on a machine with an NVIDIA GPU, in under 11 minutes,
#   1. makes JAX see the GPU (installs the `cuda` extra into the virtual environment
#      when JAX only sees the CPU and nvidia-smi finds a GPU; on a TPU VM install
#      jax[tpu] first),
#   2. prints the devices,
#   3. runs bench.py (mlp and cnn, 3 repeats, no PyTorch) into $OUT/bench.json,
#   4. times 4 and 8 seeds of one CNN request in one vmapped program against one seed
#      (request_loop.py --seeds) into $OUT/seeds.txt,
#   5. runs the smoke experiment with the small CNN into $OUT/smoke,
#   6. times four seeds of a short CNN stream at --jobs 1 and --jobs 4 into $OUT/jobs.txt.
#
#   bash benchmarks/gpu.sh            # OUT=runs/gpu
#   OUT=/tmp/gpu bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || make setup
mkdir -p "$OUT"
backend() { "$PY" -c 'import jax; print(jax.default_backend())'; }
if [ "$(backend)" = cpu ] && command -v nvidia-smi >/dev/null 2>&1; then
  "$PY" -m pip install --quiet -e ".[cuda]"
fi
"$PY" -c 'import jax; print("devices:", jax.devices())' | tee "$OUT/devices.txt"
if [ "$(backend)" = cpu ]; then
  echo "gpu.sh: JAX sees no accelerator; the figures below are the CPU's" >&2
fi
# Two processes may share one GPU: no preallocation of its memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout 240 "$PY" benchmarks/bench.py --models mlp,cnn --repeats 3 --torch off \
  --out "$OUT/bench.json" | tee "$OUT/bench.txt"
timeout 60 "$PY" benchmarks/request_loop.py --model cnn --iterations 100 --seeds 4,8 \
  | tee "$OUT/seeds.txt"
timeout 150 "$PY" -m ugclu_jax run --config smoke --workdir "$OUT/smoke" --overwrite \
  --no-progress --set train.model=cnn
# Four seeds of a short stream one after another, then in four processes sharing the
# device (the compiled steps are in the cache from the run above for both).
for jobs in 1 4; do
  start=$(date +%s.%N)
  timeout 90 "$PY" -m ugclu_jax run --config smoke --workdir "$OUT/jobs$jobs" --overwrite \
    --no-progress --no-render --set train.model=cnn --set "stream=L:t0 L:t1 U:c1" \
    --set seeds=4 --jobs "$jobs" > "$OUT/jobs$jobs.log" 2>&1 && rc=0 || rc=$?
  echo "seeds=4 --jobs $jobs: $(awk "BEGIN { print $(date +%s.%N) - $start }") s (exit $rc)" | tee -a "$OUT/jobs.txt"
done
echo "gpu.sh: wrote $OUT/bench.json, $OUT/bench.txt, $OUT/seeds.txt, $OUT/smoke/report.md and $OUT/jobs.txt"
