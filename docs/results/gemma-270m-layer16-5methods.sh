#!/usr/bin/env bash
# Real Gemma-3-270M, layer 16, all five methods (eNTK, PCA, ICA, TopK SAE, random) at N = 512 and N = 1,024.
# Probe sets: /work/probes/gemma-3-270m-1024 was built with
#   python -m entk_core probes --model gemma-3-270m --stories /work/shared/data/tinystories/tinystories-v1-train-head.txt \
#       --out probes/gemma-3-270m-1024 --per-tag 128 --seed 0
# and the N = 512 set is its nested first 64 per tag:
#   python -m entk_core probes --from probes/gemma-3-270m-1024 --per-tag 64 --out probes/gemma-3-270m-512
# Each run records wall/CPU seconds and peak RSS (/usr/bin/time -v) and the load before and after.
set -u
MODEL=${MODEL:-/work/models/gemma-3-270m}
OUT=docs/results
# NS="512 1024" (default) runs both one after the other; this session ran them side by side (NS=512, NS=1024)
for N in ${NS:-512 1024}; do
  echo "== N=$N start $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/gemma-270m-layer16-runs.log"
  nice -n 10 /usr/bin/time -v -o "$OUT/gemma-270m-layer16-N$N-5methods.time" \
    python -m entk_core lm-align --model "$MODEL" --probes "probes/gemma-3-270m-$N" --layer 16 --json \
    > "$OUT/gemma-270m-layer16-N$N-5methods.json" 2> "$OUT/gemma-270m-layer16-N$N-5methods.stderr"
  rc=$?
  echo "== N=$N end $(date -u +%FT%TZ) rc=$rc load: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/gemma-270m-layer16-runs.log"
done
