"""`instability.schedule: restart` (the paper's Figure 4 control) and `instability.pairs: disjoint`
end to end: a small sweep through the CLI on a slice of Fashion-MNIST, its checkpoints, curves and
records, a restarted copy equal to the plain loop with the schedule shifted by k, and a restarted
copy killed past T that resumes to the same bits."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lmcsweep.cli import main
from lmcsweep.config import load_sweep
from lmcsweep.data import load_dataset, make_loader
from lmcsweep.models import build_model
from lmcsweep.store import Store
from lmcsweep.run import bodies as jobs
from lmcsweep.sweep import run_sweep
from lmcsweep.plan.build import build_plan
from lmcsweep.tracking import Tracker
from lmcsweep.train import make_optimizer, train

# SGD with warmup and a milestone, so the learning rate of a step depends on where the schedule
# started; copies from k = 20 train to 80. Resume checkpoints every 40 iterations: a k = 20 copy
# leaves one at 40, before its schedule's milestone (restarted: at 70) and the plain one's (50).
SWEEP = """\
name: fig4
experiment: tests-fig4
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 60it, batch_size: 60, optimizer: sgd, lr: 0.05, momentum: 0.9, schedule: step,
        milestones: [50it], warmup: 10it, eval_every: 20it, checkpoint_every: 40it, model: {hidden: [32]}}
replicates: 1
instability: {rewind: [0it, 20it], copies: 4, pairs: disjoint, schedule: restart, alphas: 3, splits: [test]}
imp: {levels: 1, rewind: [20it]}
"""
T, K = 60, 20


def _invoke(store: Path, *args):
    return CliRunner().invoke(main, ["--store", str(store), *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def fig4(tmp_path_factory):
    """The sweep run once through the CLI, its resume checkpoints kept (as if every copy had been
    killed at its last one): (sweep file, store folder, plan)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("fig4")
    path, store = folder / "sweep.yaml", folder / "store"
    path.write_text(textwrap.dedent(SWEEP))
    with pytest.MonkeyPatch.context() as mp:  # the forked copy workers inherit it
        mp.setattr(Store, "clear_resume", lambda self, job: None)
        mp.setattr(jobs, "mark_trained", lambda *args: None)  # no "trained" record over the last resume one
        result = _invoke(store, "run", "--no-progress", path)
    assert result.exit_code == 0, result.output
    yield path, store, build_plan(load_sweep(path))
    torch.set_num_threads(threads)


def _branch(plan, k: int, copy: int):
    return next(j for j in plan.jobs if j.kind == "branch" and j.tags["rewind"] == k and j.tags["copy"] == copy)


def test_restarted_copies_train_T_more_iterations(fig4):
    _, store, plan = fig4
    tracker = Tracker(root=store)
    runs = {r.data.tags["lmcsweep.job"]: r for r in tracker.runs_of_sweep("fig4", kind="branch", status="FINISHED")}
    branches = [j for j in plan.jobs if j.kind == "branch" and j.spec.mask is None]
    assert len(branches) == 8 and {j.hash for j in branches} <= set(runs)
    for job in branches:
        k = job.tags["rewind"]
        finals = sorted(p.name for p in (store / "checkpoints" / job.hash).glob("it*.pt"))
        assert finals == [f"it{k + T}.pt"], (k, finals)
        run = runs[job.hash]
        history = {key: sorted(m.step for m in tracker.client.get_metric_history(run.info.run_id, key))
                   for key in ("loss", "test_accuracy", "final_test_accuracy")}
        assert history["loss"] == list(range(k + 1, k + T + 1))       # T steps, on global iterations
        assert history["test_accuracy"] == list(range(k + 20, k + T + 1, 20))  # the cadence, globally
        assert history["final_test_accuracy"] == [k + T]
        assert run.data.params["instability.schedule"] == "restart"
        assert run.data.params.get("job.schedule") == ("restart" if k else None)


def test_imp_levels_follow_the_restarted_schedule(fig4):
    """Level 0 is the dense copy 0 from k (reused, its final checkpoint at k + T shared); level 1
    prunes that network at k + T and trains its subnetwork from k to k + T as well."""
    _, store, plan = fig4
    tracker = Tracker(root=store)
    level0, level1 = (next(j for j in plan.jobs if j.kind == "branch" and j.tags["level"] == n) for n in (0, 1))
    assert level0.same_as == _branch(plan, K, 0).hash
    runs = {r.data.tags["lmcsweep.job"]: r for r in tracker.runs_of_sweep("fig4", status="FINISHED")
            if "lmcsweep.job" in r.data.tags}
    assert runs[level0.hash].data.tags["lmcsweep.origin"] == "reused"
    assert (store / "checkpoints" / level0.hash / f"it{K + T}.pt").samefile(
        store / "checkpoints" / level0.same_as / f"it{K + T}.pt")
    assert sorted(p.name for p in (store / "checkpoints" / level1.hash).glob("it*.pt")) == [f"it{K + T}.pt"]
    assert runs[level1.hash].data.tags["lmcsweep.origin"] == "computed"
    assert 0.79 < runs[level1.spec.mask].data.metrics["density"] < 0.81


def test_disjoint_pairs_give_copies_over_two_records(fig4):
    _, store, _ = fig4
    result = _invoke(store, "query", "--sweep", "fig4", "--format", "json")
    records = json.loads(result.output)
    assert sorted((r["rewind"], r["pair"]) for r in records) == [(0, "0-1"), (0, "2-3"), (K, "0-1"), (K, "2-3")]
    assert all(r["split"] == "test" and 0 <= r["error_max"] <= 1 for r in records)


def test_restarted_copy_is_the_plain_loop_with_the_schedule_shifted(fig4):
    """Copy 1 from k: the dense run's state at k, its own data order, iterations k .. k + T, and
    the learning rate of step k + j that of step j."""
    _, store, plan = fig4
    job = _branch(plan, K, 1)
    train_job = plan.by_hash()[job.spec.train]
    state = torch.load(store / "checkpoints" / train_job.hash / f"it{K}.pt", weights_only=False)
    data = load_dataset("fashion_mnist", subset_train=600, subset_test=300)
    model = build_model("lenet", 10, data.shape, train_job.spec.seeds["init"], hidden=[32])
    model.load_state_dict(state["model"])
    optimizer = make_optimizer(model, plan.hyper)
    optimizer.load_state_dict(state["optimizer"])
    seeds = job.spec.seeds
    loader = make_loader(data, "train", 60, seeds["data_order"], seeds["augmentation"])
    for _ in train(model, optimizer, loader.train_batches(K, K + T), plan.hyper, K, K + T, lr_offset=K):
        pass
    saved = torch.load(store / "checkpoints" / job.hash / f"it{K + T}.pt", weights_only=False)["model"]
    assert all(torch.equal(saved[n], model.state_dict()[n]) for n in saved)
    # and not the plain schedule over the same iterations (so the comparison above can fail)
    plain = build_model("lenet", 10, data.shape, train_job.spec.seeds["init"], hidden=[32])
    plain.load_state_dict(state["model"])
    optimizer = make_optimizer(plain, plan.hyper)
    optimizer.load_state_dict(state["optimizer"])
    for _ in train(plain, optimizer, loader.train_batches(K, K + T), plan.hyper, K, K + T):
        pass
    assert not all(torch.equal(saved[n], plain.state_dict()[n]) for n in saved)


def test_restarted_copy_resumes_past_T_to_the_same_bits(fig4):
    path, store_dir, plan = fig4
    tracker, store = Tracker(root=store_dir), Store(store_dir)
    job = _branch(plan, K, 0)
    pair = next(j for j in plan.jobs if j.kind == "interpolate" and job.hash in j.parents)
    resume = store.load_resume(job.hash)
    assert resume is not None and resume["iteration"] == 40   # kept by the fixture: the copy's last one
    final = store.checkpoint_path(job.hash, K + T)
    weights = torch.load(final, weights_only=False)["model"]
    before = {}
    for run in tracker.runs_of_sweep("fig4", status="FINISHED"):   # as if killed after iteration 40
        if run.data.tags.get("lmcsweep.job") in (job.hash, pair.hash):
            before[run.data.tags["lmcsweep.job"]] = sorted(tracker.metric_history(run.info.run_id))
            tracker.finish(run.info.run_id, "KILLED")
    final.unlink()
    outcome = run_sweep(load_sweep(path), tracker, store, progress=False)
    assert set(outcome.computed) == {job.hash, pair.hash} and not outcome.failed
    after = {r.data.tags["lmcsweep.job"]: r for r in tracker.runs_of_sweep("fig4", status="FINISHED")
             if r.data.tags.get("lmcsweep.job") in before}
    assert after[job.hash].data.tags["lmcsweep.resumed_from"] == "40"
    again = torch.load(final, weights_only=False)["model"]
    assert all(torch.equal(weights[n], again[n]) for n in weights)
    for name, run in after.items():   # the whole curve again, value for value; the same barrier
        history = sorted(tracker.metric_history(run.info.run_id))
        assert history == before[name], name
    assert store.load_resume(job.hash) is None
