"""One job of a planned sweep, run in a fresh process from its stored spec (`lmcsweep job run`),
gives what the runner gives: the same bits in every checkpoint and mask, the same metrics, tags and
params, nested under the same parents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmcsweep.plan.build import build_plan
from lmcsweep.plan.graph import plan_from_dict
from lmcsweep.config import load_sweep
from lmcsweep.identity import canonical
from lmcsweep.tracking import Tracker

SWEEP = """\
name: jobs
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 40it, batch_size: 60, eval_every: 20it, checkpoint_every: 20it, model: {hidden: [32]}}
replicates: 1
instability: {rewind: [0it, 20it], copies: 2, alphas: 4, train_examples: 300}
imp: {levels: 1, rewind: [20it], instability: false, controls: [random_prune]}
"""


def _cli(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _runs(store: Path) -> dict[str, object]:
    """job hash -> its FINISHED run, and every run by id (for parents)."""
    runs = Tracker(root=store).runs_of_sweep("jobs")
    return {r.data.tags["lmcsweep.job"]: r for r in runs
            if r.info.status == "FINISHED" and r.data.tags.get("lmcsweep.kind") != "sweep"}, \
        {r.info.run_id: r for r in runs}


def _parent_job(run, by_id) -> str:
    parent = by_id[run.data.tags["mlflow.parentRunId"]]
    return parent.data.tags["lmcsweep.job"] if parent.data.tags["lmcsweep.kind"] != "sweep" else "sweep"


# IMP matching and the instability summaries: logged by `lmcsweep run` at the end of a sweep
SWEEP_LEVEL = {"accuracy_mean", "matching_std", "matching_02", "mean_instability_test", "mean_instability_train"}


def _metrics(store: Path, run) -> list[tuple]:
    client = Tracker(root=store).client
    return sorted((m.key, m.step, m.value) for key in run.data.metrics if key not in SWEEP_LEVEL
                  for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    path = root / "sweep.yaml"
    path.write_text(SWEEP)
    by_runner, by_jobs = root / "runner", root / "jobs"
    assert _cli(by_runner, "run", "--no-progress", path).returncode == 0
    planned = _cli(by_jobs, "run", "--plan-only", path)
    assert planned.returncode == 0, planned.stderr
    listed = json.loads(_cli(by_jobs, "job", "list", "jobs", "--format", "json").stdout)
    for row in listed:  # parents first: each in a fresh process
        out = _cli(by_jobs, "job", "run", row["hash"])
        assert out.returncode == 0 and out.stdout.startswith(f"{row['hash']}: "), (row, out.stdout, out.stderr)
        assert ("reused" if row["kind"] != "prune" and row["name"].startswith("level 0") else "computed") \
            in out.stdout, out.stdout  # IMP level 0 is the dense twin's result
    return path, by_runner, by_jobs, listed


def test_the_stored_plan_is_the_plan(two_stores):
    path, _, by_jobs, listed = two_stores
    plan = build_plan(load_sweep(path))
    stored = plan_from_dict(json.loads((by_jobs / "plans" / "jobs" / "plan.json").read_text()))
    assert [r["hash"] for r in listed] == [j.hash for j in plan.jobs] == [j.hash for j in stored.jobs]
    assert [canonical(j.to_dict()) for j in stored.jobs] == [canonical(j.to_dict()) for j in plan.jobs]
    assert [type(j.spec) for j in stored.jobs] == [type(j.spec) for j in plan.jobs]  # typed, round-tripped
    assert {j.kind for j in plan.jobs} == {"train", "branch", "interpolate", "prune"}


def test_each_job_in_a_fresh_process_gives_the_runners_bits_and_records(two_stores):
    _, by_runner, by_jobs, listed = two_stores
    runs_a, ids_a = _runs(by_runner)
    runs_b, ids_b = _runs(by_jobs)
    assert {"computed", "reused"} == {runs_a[r["hash"]].data.tags["lmcsweep.origin"] for r in listed}
    for job in (r["hash"] for r in listed):
        a, b = runs_a[job], runs_b[job]
        assert a.info.run_name == b.info.run_name
        skip = {"mlflow.parentRunId", "mlflow.runName", "lmcsweep.reused_from"}
        assert {k: v for k, v in a.data.tags.items() if k not in skip} == \
            {k: v for k, v in b.data.tags.items() if k not in skip}, job
        assert _parent_job(a, ids_a) == _parent_job(b, ids_b), job
        params_a, params_b = dict(a.data.params), dict(b.data.params)
        params_a.pop("git_commit"), params_b.pop("git_commit")  # "-dirty" if the tree was edited meanwhile
        if "train.group" in params_b:  # trained alone here, beside its wave's other copies there
            assert params_b.pop("train.group") == "1"
            params_a.pop("train.group")
        assert params_a == params_b, job
        assert _metrics(by_runner, a) == _metrics(by_jobs, b), job
    files = sorted(p.relative_to(by_runner / "checkpoints") for p in (by_runner / "checkpoints").rglob("*.pt"))
    assert files and files == sorted(p.relative_to(by_jobs / "checkpoints")
                                     for p in (by_jobs / "checkpoints").rglob("*.pt"))
    for rel in files:
        x = torch.load(by_runner / "checkpoints" / rel, weights_only=False)
        y = torch.load(by_jobs / "checkpoints" / rel, weights_only=False)
        if rel.name == "ticket.pt":  # an IMP level's ticket: its plain fields, then its tensors
            plain = lambda s: {k: v for k, v in s.items() if k not in ("state_dict", "mask")}  # noqa: E731
            assert plain(x) == plain(y), rel
            x, y = ({**{f"w.{k}": v for k, v in s["state_dict"].items()},
                     **{f"m.{k}": v for k, v in s["mask"].items()}} for s in (x, y))
        tensors = lambda s: {k: v for k, v in (s.get("model", s)).items()}  # noqa: E731
        assert tensors(x).keys() == tensors(y).keys()
        assert all(torch.equal(tensors(x)[k], tensors(y)[k]) for k in tensors(x)), rel


def test_job_run_says_why_it_cannot_run(two_stores, tmp_path):
    path, _, by_jobs, listed = two_stores
    unknown = _cli(by_jobs, "job", "run", "branch_0000000000000000")
    assert unknown.returncode == 2 and "not in any sweep planned" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    fresh = tmp_path / "fresh"
    assert _cli(fresh, "run", "--plan-only", path).returncode == 0
    branch = next(r for r in listed if r["kind"] == "branch")
    early = _cli(fresh, "job", "run", branch["hash"])   # its dense network is not trained yet
    assert early.returncode == 2 and branch["parents"][0] in early.stderr and "done first" in early.stderr
    again = _cli(by_jobs, "job", "run", listed[0]["hash"])
    assert again.returncode == 0 and "already done" in again.stdout
