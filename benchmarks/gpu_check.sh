#!/usr/bin/env bash
# The CUDA check (SPEC 9): CUDA parity tests, kernel benchmarks against their peers, training steps.
# Writes JSON and Markdown to $RETAILSIM_RESULTS_DIR (default benchmarks/results/), named by device and date.
# Without a CUDA GPU it runs end to end as a dry run: Triton through its interpreter, tiny shapes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
RESULTS="${RETAILSIM_RESULTS_DIR:-benchmarks/results}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RESULTS"

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=cuda; quick=()
else
  device=cpu; quick=(--quick); export TRITON_INTERPRET=1
  echo "No CUDA GPU: dry run on the CPU through the Triton interpreter with tiny shapes."
fi
tag="$("$PY" - "$device" <<'PYEOF'
import re, sys, datetime, torch
name = torch.cuda.get_device_name() if sys.argv[1] == "cuda" else "cpu-dryrun"
print(re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() + "-" + datetime.date.today().isoformat())
PYEOF
)"
"$PY" - <<'PYEOF'
import torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "not installed"
print(f"torch {torch.__version__}, triton {triton_version}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
PYEOF

status=0
echo "== CUDA parity tests (pytest -m cuda)"
"$PY" -m pytest tests -m cuda -q -ra -p no:cacheprovider --junitxml "$RESULTS/$tag-tests.xml"
rc=$?; [ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1

echo "== kernel benchmarks against their peers"
"$PY" -m pytest benchmarks -q -ra -p no:cacheprovider --device "$device" "${quick[@]}" \
  --benchmark-json "$RESULTS/$tag.json" -k "not pipeline"
rc=$?; [ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1
[ -f "$RESULTS/$tag.json" ] && "$PY" benchmarks/report.py "$RESULTS/$tag.json" --out "$RESULTS/$tag.md"

echo "== training steps with each backend (SPEC 9)"
# The default model at batch 256 for 200 steps on CUDA; the dry run uses the tiny preset for a few steps.
if [ "$device" = cuda ]; then preset=default; steps=200; batch=256; every=50; else preset=tiny; steps=3; batch=16; every=1; fi
work="$(mktemp -d)"
"$PY" -m retailsim.generate --out "$work/raw" --customers 2000 --weeks 60 --quiet \
  && "$PY" -m retailsim.prepare_samples --input "$work/raw" --out "$work/samples" --quiet \
  && "$PY" -m retailsim.prepare_tensor_cache --samples "$work/samples" --out "$work/cache" --quiet || status=1
for backend in triton torch; do
  [ "$device" = cpu ] && [ "$backend" = triton ] && { echo "triton training steps: skipped in the CPU dry run (minutes per step in the interpreter)"; continue; }
  start=$(date +%s.%N)
  "$PY" -m retailsim.train --data "$work/cache" --out "$work/ckpt-$backend" --preset "$preset" --epochs 1 \
    --max-steps "$steps" --batch-size "$batch" --backend "$backend" --device "$device" --quiet --log-every "$every" \
    --val-batches 4 || status=1
  end=$(date +%s.%N)
  "$PY" - "$work/ckpt-$backend/metrics.jsonl" "$backend" "$preset" "$steps" "$batch" "$start" "$end" \
    "$RESULTS/$tag-train.jsonl" <<'PYEOF' || status=1
import json, sys
log, backend, preset, steps, batch, start, end, out = sys.argv[1:]
records = [json.loads(line) for line in open(log)]
epoch = [r for r in records if "train_loss" in r][-1]
# The epoch's rate includes the first steps (Triton compiles its kernels then); the step windows after the
# first one (--log-every 50) give the steady rate.
windows = [r["samples_per_s"] for r in records if r.get("kind") == "step"][1:]
row = {"backend": backend, "preset": preset, "steps": int(steps), "batch_size": int(batch),
       "wall_s": round(float(end) - float(start), 2), "samples_per_s": epoch.get("samples_per_s"),
       "steady_samples_per_s": round(sum(windows) / len(windows), 1) if windows else None,
       "train_loss": epoch["train_loss"], "validation_loss": epoch.get("val_loss")}
print("training:", json.dumps(row))
with open(out, "a") as sink:
    sink.write(json.dumps(row) + "\n")
PYEOF
done
rm -rf "$work"
echo "gpu_check: results in $RESULTS/$tag.{json,md} and $tag-train.jsonl; exit $status"
exit $status
