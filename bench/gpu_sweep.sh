#!/usr/bin/env bash
# End-to-end check of `lmcsweep run` on a GPU (about 2 minutes on a lent machine; run it beside
# bench/gpu.sh): a small instability + IMP sweep of ResNet-20 on synthetic CIFAR-shaped data through
# the CLI on CUDA -- the tracking process, waves of copies, IMP level 0 reused from the dense copies,
# masks and both controls, interpolation with BatchNorm re-estimated, the fused optimizer on the
# device -- then its query records, the runs' recorded device settings, and a rerun that must find
# nothing to do. Prints the sweep's wall time and "gpu sweep check: ok", or what failed (exit 1).
#
#   bash bench/gpu_sweep.sh            # on the GPU machine
#   bash bench/gpu_sweep.sh --tiny     # CPU, a shrunk ResNet-20 and a few iterations (a test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ " $* " == *" --tiny "* ]]; then
    device=cpu; iterations=12; rewind="[0it, 4it]"; imp_rewind="[4it]"; model=", model: {width: 4, depth: 8}, batch_size: 32, eval_every: 6it"
    data="train: 512, test: 256"
else
    device=cuda; iterations=300; rewind="[0it, 50it]"; imp_rewind="[50it]"; model=", batch_size: 128"
    data="train: 10000, test: 2000"
fi
cat > "$work/sweep.yaml" <<EOF
name: gpu-check
experiment: gpu-check
preset: resnet20
data: {dataset: synthetic, synthetic: {shape: [3, 32, 32], classes: 10, $data}}
train: {iterations: ${iterations}it, device: $device$model}
replicates: 2
instability: {rewind: $rewind, copies: 2, alphas: 5, splits: [test, train], train_examples: 1000, bn: reset, bn_batches: 4}
imp: {levels: 1, rewind: $imp_rewind, instability: true, controls: [random_prune, random_reinit]}
EOF
store="$work/store"
SECONDS=0
timeout 420 "$PY" -m lmcsweep.cli --store "$store" run --no-progress "$work/sweep.yaml" | tee "$work/run.txt"
echo "sweep wall time: $SECONDS s (with process start and imports)"
timeout 120 "$PY" -m lmcsweep.cli --store "$store" query --sweep gpu-check --format json > "$work/records.json"
timeout 120 "$PY" -m lmcsweep.cli --store "$store" run --no-progress "$work/sweep.yaml" > "$work/rerun.txt"
timeout 120 "$PY" - "$store" "$work" "$device" <<'PYEOF'
import json, math, sys
from pathlib import Path
from lmcsweep.tracking import Tracker

store, work, device = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
problems = []
run_text, rerun_text = (work / "run.txt").read_text(), (work / "rerun.txt").read_text()
# 2 trains; dense: 2 x 2 k x (2 copies + 1 pair); IMP: 2 x (level 0: 2 + 1, reused; level 1: 3 x (2 + 1)) + 2 x 2 levels
if "0 failed" not in run_text or "6 reused from the store" not in run_text:
    problems.append(f"run: {run_text.strip()}")
if "nothing to do" not in rerun_text:
    problems.append(f"rerun: {rerun_text.strip()}")
records = json.loads((work / "records.json").read_text())
if len(records) != 2 * (2 + 1 + 3) * 2:  # (dense k=0, k=k1, level 0, level 1 x 3) pairs x 2 splits, 2 replicates
    problems.append(f"{len(records)} instability records")
bad = [r for r in records if not all(math.isfinite(r[k]) for k in ("instability", "error_endpoints", "error_max"))]
if bad:
    problems.append(f"non-finite records: {bad[:2]}")
runs = Tracker(root=store).runs_of_sweep("gpu-check", status="FINISHED")
trains = [r for r in runs if r.data.tags.get("lmcsweep.kind") == "train"]
for r in trains:
    p = r.data.params
    if p.get("device") != device or p.get("data.device") != device or p.get("train.channels_last") != str(device == "cuda"):
        problems.append(f"train run params: device {p.get('device')}, data.device {p.get('data.device')}, "
                        f"channels_last {p.get('train.channels_last')}")
twins = [r for r in runs if r.data.tags.get("lmcsweep.same_as")]
if len(twins) != 6:
    problems.append(f"{len(twins)} runs reused from their dense twin")
for r in records[:4]:
    print(f"  replicate {r['replicate']} k={r['rewind']} level {r['level']} {r['control'] or ''} {r['split']}: "
          f"instability {r['instability']:.4f} (max {r['error_max']:.4f}, ends {r['error_endpoints']:.4f})")
print("gpu sweep check: " + ("ok" if not problems else "FAILED\n  " + "\n  ".join(problems)))
sys.exit(1 if problems else 0)
PYEOF
