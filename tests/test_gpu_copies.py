"""bench/gpu_copies.py measures ways of training many copies on one GPU; its --tiny CPU mode runs
every candidate that runs on a CPU, so the bench cannot rot between GPU sessions."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_gpu_copies_tiny_mode(tmp_path):
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "bench" / "gpu_copies.py"), "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    cells = json.loads((tmp_path / "gpu_copies.json").read_text())["cells"]
    measured = {(c["model"], c["candidate"], c["copies"]) for c in cells if c["images_per_s"]}
    for model in ("resnet20", "lenet"):
        for candidate in ("loop", "streams", "threads", "vmap", "processes"):
            assert {(model, candidate, 1), (model, candidate, 2)} <= measured, out.stdout
        assert (model, "plain DataLoader", 1) in measured
    text = (tmp_path / "gpu_copies.txt").read_text()
    # On a CPU with one kernel thread a copy's bits do not depend on its group or its way
    for line in text.splitlines():
        if line.strip().startswith(("loop ", "streams ", "threads ", "processes ")) and "|" in line:
            assert line.split()[-3:] == ["bitwise", "|", "bitwise"], line
    assert text.count("x one network with today's loop") == 2
