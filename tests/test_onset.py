"""Onset search (`instability.rewind: {search: onset}`) end to end through the CLI on LeNet /
Fashion-MNIST: it finds the earliest stable k the full grid finds, with fewer analyses; a second
sweep on an overlapping grid computes only what is new; a SIGKILL resumes without recomputing;
the bracket logic on its own; `instability.bn: repair` through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from lmcsweep.search.onset import bracket

GRID = "[0it, 2it, 5it, 10it, 15it, 20it, 30it, 40it]"
SWEEP = """\
name: {name}
experiment: tests
preset: lenet
data: {{dataset: fashion_mnist, subset_train: 600, subset_test: 300}}
train: {{iterations: 80it, batch_size: 60, eval_every: 40it, checkpoint_every: 20it}}
instability:
  rewind: {rewind}
  alphas: 5
  splits: [test]
"""
THRESHOLD = 0.01
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    """One kernel thread in this process too (as its subprocesses: OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def onset(grid: str = GRID) -> str:
    return f"{{search: onset, grid: {grid}, threshold: {THRESHOLD}}}"


def _runs(store, sweep: str, kind: str):
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.`lmcsweep.sweep` = '{sweep}' and tags.`lmcsweep.kind` = '{kind}'",
                              max_results=5000)


def _download(store, run):
    path = MlflowClient(f"sqlite:///{store / 'mlflow.db'}").download_artifacts(run.info.run_id, "onset.json")
    return json.loads(Path(path).read_text())


def _onset_rows(cli, sweep):
    result = cli("query", "--sweep", sweep, "--kind", "onset", "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_bracket_bisects_and_flags_what_is_not_monotone():
    grid = list(range(8))
    assert bracket(grid, {}).next == 3
    b = bracket(grid, {3: True, 1: False})
    assert (b.last_unstable, b.first_stable, b.next) == (1, 3, 2)
    b = bracket(grid, {3: True, 1: False, 2: True})
    assert (b.last_unstable, b.first_stable, b.next, b.non_monotone) == (1, 2, None, [])
    b = bracket(grid, {0: True, 1: True, 2: True, 3: True})  # stable everywhere measured: onset at 0
    assert (b.last_unstable, b.first_stable, b.next) == (None, 0, None)
    b = bracket(grid, {3: False, 5: False, 7: False})
    assert (b.last_unstable, b.first_stable, b.next) == (7, None, None)  # no stable k in the grid
    b = bracket(grid, {2: True, 5: False, 6: True})  # stable at 2, unstable at 5: not monotone
    assert (b.last_unstable, b.first_stable, b.next, b.non_monotone) == (5, 6, None, [2])
    # bisection over n points needs at most ceil(log2(n + 1)) probes, whatever the onset
    for n in (8, 16):
        for true_onset in range(n + 1):
            known, probes = {}, 0
            while (nxt := bracket(list(range(n)), known).next) is not None:
                known[nxt], probes = nxt >= true_onset, probes + 1
            b = bracket(list(range(n)), known)
            assert b.first_stable == (true_onset if true_onset < n else None) and probes <= (n + 1).bit_length()


def test_onset_finds_the_full_grids_onset_with_fewer_analyses_and_reuses(cli, tmp_path, store):
    path = tmp_path / "onset.yaml"
    path.write_text(SWEEP.format(name="onset", rewind=onset()))
    result = cli("run", "--no-progress", path)
    assert result.exit_code == 0, result.output
    [row] = _onset_rows(cli, "onset")
    assert row["state"] == "found" and row["analyses_reused"] == 0 and row["grid_points"] == 8
    assert row["analyses_new"] == len(row["measured"]) < 8
    computed = [r for r in _runs(store, "onset", "interpolate") if r.data.tags["lmcsweep.origin"] == "computed"]
    assert len(computed) == row["analyses_new"]  # one pair per k (2 copies)
    [train] = _runs(store, "onset", "train")
    assert train.data.metrics["onset_first_stable"] == row["first_stable"]
    assert train.data.metrics["onset_analyses_new"] == row["analyses_new"]
    assert train.data.tags["lmcsweep.onset"] == f"dense:found:{row['first_stable']}"
    assert cli("report", "onset", "--out", tmp_path / "report").exit_code == 0  # dashed: the search's threshold
    assert f"stability threshold, {100 * THRESHOLD:g}%" in (tmp_path / "report/onset/index.html").read_text()

    # an overlapping grid: what the first search measured is reused, only the new points computed
    path.write_text(SWEEP.format(name="overlap", rewind=onset("[0it, 1it, 2it, 3it, 5it, 10it]")))
    assert cli("run", "--no-progress", path).exit_code == 0
    [again] = _onset_rows(cli, "overlap")
    shared = {k for k in row["measured"] if int(k) in (0, 1, 2, 3, 5, 10)}
    assert again["analyses_reused"] == len(shared) and {k: again["measured"][k] for k in shared} == \
        {k: row["measured"][k] for k in shared}
    computed = [r for r in _runs(store, "overlap", "interpolate") if r.data.tags["lmcsweep.origin"] == "computed"]
    assert len(computed) == again["analyses_new"] and not set(again["measured"]) - shared - {
        r.data.tags["lmcsweep.rewind"] for r in computed}

    # the whole grid (the list form): it reuses the search's analyses and finds the same onset
    path.write_text(SWEEP.format(name="full", rewind=GRID))
    assert cli("run", "--no-progress", path).exit_code == 0
    records = json.loads(cli("query", "--sweep", "full", "--format", "json").output)
    by_k = {r["rewind"]: [r["instability"]] for r in records}
    assert len(by_k) == 8
    values = [by_k[k][0] for k in sorted(by_k)]
    stable = [v < THRESHOLD for v in values]
    assert stable == sorted(stable) and any(stable) and not all(stable), "the case is not determined: " \
        f"{values}"  # monotone in k, with an onset inside the grid
    first = min(k for k in by_k if by_k[k][0] < THRESHOLD)
    assert row["first_stable"] == first and row["last_unstable"] == max(k for k in by_k if k < first)
    reused = Counter(r.data.tags["lmcsweep.origin"] for r in _runs(store, "full", "interpolate"))
    assert reused["reused"] == len((set(row["measured"]) | set(again["measured"])) & {str(k) for k in by_k})


def test_onset_resumes_after_sigkill_without_recomputing(tmp_path):
    path, store = tmp_path / "onset.yaml", tmp_path / "store"
    path.write_text(SWEEP.format(name="killed", rewind=onset()))
    cmd = [sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", "--no-progress", str(path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while len(list((store / "checkpoints").glob("branch_*"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the second probe's copies have started: the first probe is done
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search ended before the kill"
    result = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    finished = [r for r in _runs(store, "killed", "interpolate") if r.info.status == "FINISHED"]
    jobs = Counter(r.data.tags["lmcsweep.job"] for r in finished)
    assert jobs and max(jobs.values()) == 1  # no analysis computed twice
    [train] = [r for r in _runs(store, "killed", "train") if r.info.status == "FINISHED"]
    [row] = _download(store, train)
    assert row["state"] == "found" and row["analyses_new"] == len(jobs) == len(row["measured"])


def test_bn_repair_through_the_cli(cli, tmp_path, store):
    path = tmp_path / "repair.yaml"
    short = SWEEP.replace("iterations: 80it", "iterations: 30it").replace("eval_every: 40it", "eval_every: 30it")
    path.write_text(short.format(name="repair", rewind="[0it]").replace("splits: [test]",
                                                                        "splits: [test]\n  bn: repair\n  bn_batches: 2"))
    result = cli("run", "--no-progress", path)
    assert result.exit_code == 0, result.output
    path.write_text(short.format(name="plain", rewind="[0it]"))
    assert cli("run", "--no-progress", path).exit_code == 0
    [fixed] = [r for r in _runs(store, "repair", "interpolate")]
    [plain] = [r for r in _runs(store, "plain", "interpolate")]
    assert fixed.data.params["instability.bn"] == "repair"
    assert fixed.data.tags["lmcsweep.job"] != plain.data.tags["lmcsweep.job"]
    assert fixed.data.tags["lmcsweep.origin"] == plain.data.tags["lmcsweep.origin"] == "computed"
    # the same pair: the ends are the same networks, the middle of the path is repaired
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    curve = {name: [m.value for m in sorted(client.get_metric_history(r.info.run_id, "loss_test"),
                                            key=lambda m: m.step)] for name, r in (("fixed", fixed), ("plain", plain))}
    assert abs(curve["fixed"][0] - curve["plain"][0]) < 1e-4 and abs(curve["fixed"][-1] - curve["plain"][-1]) < 1e-4
    assert curve["fixed"][2] != curve["plain"][2]


def test_onset_plans_only_its_probes_with_the_list_forms_hashes():
    from lmcsweep.config import Lines, validate
    from lmcsweep.plan.build import build_plan

    def sweep(rewind, imp=""):
        import yaml
        return validate(yaml.safe_load(SWEEP.format(name="p", rewind=rewind) + imp), Lines(), "x.yaml")

    listed, searched = sweep(GRID), sweep(onset())
    assert {j.hash for j in build_plan(listed).jobs} == {j.hash for j in build_plan(searched).jobs}
    probed = build_plan(searched, probes={(0, None): {2, 10}})
    assert sorted({j.tags["rewind"] for j in probed.jobs if j.kind == "interpolate"}) == [2, 10]
    assert {j.hash for j in probed.jobs} < {j.hash for j in build_plan(listed).jobs}
    assert [j.kind for j in build_plan(searched, probes={}).jobs] == ["train"]
    # with IMP's instability: the chain at a probed k is built down to the deepest level probing it
    imp = sweep(onset(), "imp: {levels: 3, instability: true}\n")
    plan = build_plan(imp, probes={(0, None): set(), (0, 1): {5}, (0, 3): {20}})
    levels = {(j.tags["rewind"], j.tags["level"]) for j in plan.jobs if j.kind == "prune"}
    assert levels == {(5, 0), (5, 1), (20, 0), (20, 1), (20, 2), (20, 3)}


def test_onset_per_imp_level_through_the_cli(cli, tmp_path, store):
    """With imp.instability, every IMP level gets its own search over the grid: its bracket agrees
    with the instability `query` gives for that level at the points it measured."""
    path = tmp_path / "imp.yaml"
    short = SWEEP.replace("iterations: 80it", "iterations: 40it").replace("eval_every: 40it", "eval_every: 20it")
    path.write_text(short.format(name="imponset", rewind=onset("[0it, 5it, 10it, 20it]")) +
                    "imp: {levels: 1, instability: true}\n")
    result = cli("run", "--no-progress", path)
    assert result.exit_code == 0, result.output
    rows = {r["level"] or 0: r for r in _onset_rows(cli, "imponset")}
    assert set(rows) == {0, 1}
    records = json.loads(cli("query", "--sweep", "imponset", "--format", "json").output)
    for level, row in rows.items():
        assert row["state"] in ("found", "all_stable", "none_stable") and row["measured"]
        mine = {str(r["rewind"]): r["instability"] for r in records if (r["level"] or 0) == level}
        assert {k: pytest.approx(v) for k, v in row["measured"].items()} == {k: mine[k] for k in row["measured"]}
        if row["first_stable"] is not None:
            assert mine[str(row["first_stable"])] < THRESHOLD
        if row["last_unstable"] is not None:
            assert mine[str(row["last_unstable"])] >= THRESHOLD
    assert sum(row["analyses_new"] for row in rows.values()) < 2 * 4  # fewer than both full grids
    # the report's earliest stable k (Fig. 9) of level 1 is the search's, under the search's threshold
    assert cli("report", "imponset", "--out", tmp_path / "report").exit_code == 0
    drawn = json.loads((tmp_path / "report/imponset/figures.json").read_text())["onset"]
    [level1] = [r for r in drawn if r["level"] == 1 and r["control"] == "imp"]
    assert level1["threshold"] == THRESHOLD and level1["stable_rewinds"] == sorted(map(int, rows[1]["measured"]))
    assert level1["earliest_stable"] == rows[1]["first_stable"]
    assert "Earliest stable (instability &lt; 1%)" in (tmp_path / "report/imponset/index.html").read_text()



def test_query_onset_of_a_sweep_without_an_onset_search_says_so(cli, tmp_path, store):
    """`query --kind onset --sweep NAME`: a sweep that is no onset search is one line and exit 2; an
    onset search whose first train run has not finished (killed in it) has no records yet, exit 0."""
    path = tmp_path / "listed.yaml"
    path.write_text(SWEEP.format(name="listed", rewind="[0it, 20it]"))
    assert cli("run", "--plan-only", path).exit_code == 0  # recorded, nothing trained
    result = cli("query", "--sweep", "listed", "--kind", "onset")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "sweep 'listed' has no onset search (a list of rewind points): ask for one in its file with "
        "`instability.rewind: {search: onset, grid: [...]}` (docs/onset.md)"]
    assert cli("query", "--sweep", "listed").exit_code == 0  # its other kinds as before

    path = tmp_path / "searching.yaml"  # long: killed while it trains
    path.write_text(SWEEP.format(name="searching", rewind=onset()).replace("80it", "20000it"))
    cmd = [sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", "--no-progress", str(path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any((store / "checkpoints").glob("*/it*.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # its train job has a checkpoint: the sweep run is recorded
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search ended before the kill"
    result = cli("query", "--sweep", "searching", "--kind", "onset")
    assert result.exit_code == 0 and result.output.strip() == "(no records)"
