"""IMP with rewinding and its controls: the plan, the masks through the levels, rewinding, the two
controls, an IMP sweep with instability through the CLI on a slice of Fashion-MNIST, its query
records, a rerun that does nothing and a resume after a kill that retrains only the lost level.

The function-level pruning properties (exact global counts on one call, ties, one-call exemption,
masked training in a hand-written loop) are in test_prune.py; here they are checked on what the
sweep itself produced."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lmcsweep import prune
from lmcsweep.cli import main
from lmcsweep.config import ConfigError, load_sweep
from lmcsweep.store import Store
from lmcsweep.run import bodies as job_bodies
from lmcsweep.run.scheduler import Runner
from lmcsweep.sweep import run_sweep
from lmcsweep.records.matching import add_matching
from lmcsweep.plan.build import build_plan
from lmcsweep.tracking import Tracker

SWEEP = """\
name: imp-small
experiment: tests-imp
preset: lenet
data: {dataset: fashion_mnist, subset_train: 1200, subset_test: 500}
train: {iterations: 40it, batch_size: 60, optimizer: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1e-4,
        eval_every: 20it, checkpoint_every: 20it}
replicates: 2
instability: {rewind: [20it], copies: 2, alphas: 3, splits: [test]}
imp:
  levels: 2
  rewind: [20it]
  instability: true
  controls: [random_prune, random_reinit]
  exempt: [output]
"""
K, T = 20, 40


def _write(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _invoke(store: Path, *args):
    return CliRunner().invoke(main, ["--store", str(store), *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    """The small IMP sweep, run once through the CLI: (sweep file, store folder, run output)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # LeNet on a shared 2-CPU machine: one thread is the fast setting
    folder = tmp_path_factory.mktemp("imp")
    path, store = _write(folder, SWEEP), folder / "store"
    result = _invoke(store, "run", "--no-progress", path)
    yield path, store, result
    torch.set_num_threads(threads)


def _chains(plan):
    """{(replicate, k): [prune job of level 0, 1, ...]}"""
    out = {}
    for job in plan.jobs:
        if job.kind == "prune":
            out.setdefault((job.tags["replicate"], job.tags["rewind"]), []).append(job)
    return out


def _branches(plan, prune_hash, control=None):
    return [j for j in plan.jobs if j.kind == "branch" and j.spec.mask == prune_hash
            and j.spec.control == control]


# ------------------------------------------------------------------------------ the plan


def test_plan_levels_controls_and_seeds(tmp_path):
    plan = build_plan(load_sweep(_write(tmp_path, SWEEP)))
    chains = _chains(plan)
    assert sorted(chains) == [(0, K), (1, K)]
    hashes = [j.hash for j in plan.jobs]
    assert len(hashes) == len(set(hashes))
    seeds = set()
    for (r, k), prunes in chains.items():
        train = next(j for j in plan.jobs if j.kind == "train" and j.tags["replicate"] == r)
        assert [p.tags["level"] for p in prunes] == [0, 1, 2]
        for level, p in enumerate(prunes):
            f = p.spec.identity()
            assert p.iterations == 0 and p.tree_parent == train.hash
            assert p.tags["density"] == pytest.approx(0.8 ** level)
            assert f["fraction"] == 0.2 and f["style"] == "iterative" and f["target_density"] is None
            assert f["exempt"] == ["output"]
            imp = _branches(plan, p.hash)
            assert [b.tags["copy"] for b in imp] == [0, 1]
            assert all(b.tree_parent == p.hash and b.tags["level"] == level for b in imp)
            if level == 0:
                assert f["source"] is None and f["previous"] is None and p.parents == [train.hash]
                assert not [j for j in plan.jobs if j.kind == "branch" and j.spec.mask == p.hash
                            and j.spec.control]    # no controls at density 1
            else:
                before = prunes[level - 1]
                assert f["source"] == _branches(plan, before.hash)[0].hash and f["previous"] == before.hash
                assert p.parents == [f["source"], f["previous"]]
                for control in ("random_prune", "random_reinit"):
                    branches = _branches(plan, p.hash, control)
                    assert len(branches) == 2 and len({b.spec.control_seed for b in branches}) == 1
                    seeds.add(branches[0].spec.control_seed)
            # the level's pair is interpolated, nested under copy 0
            assert [j for j in plan.jobs if j.kind == "interpolate" and j.parents == [imp[0].hash, imp[1].hash]]
    assert len(seeds) == 2 * 2 * 2  # a seed per control, level and replicate


def test_plan_counts_level_zero_as_reused(tmp_path):
    result = _invoke(tmp_path / "store", "plan", _write(tmp_path, SWEEP))
    assert result.exit_code == 0, result.output
    assert "of the jobs left, 6 (IMP level 0) are the dense ones" in result.output
    # 2 x 40 (dense) + 4 x 20 (dense copies) + 2 levels x 12 x 20; level 0's 4 x 20 are the dense copies'
    assert "training iterations left: 640" in result.output


def test_one_shot_plan_and_validation(tmp_path):
    one_shot = SWEEP.replace("levels: 2", "levels: 1\n  style: one_shot\n  target_density: 0.3")
    plan = build_plan(load_sweep(_write(tmp_path, one_shot)))
    prunes = _chains(plan)[(0, K)]
    assert [p.spec.style for p in prunes] == ["one_shot"] * 2
    assert prunes[1].spec.target_density == 0.3 and prunes[1].tags["density"] == 0.3
    with pytest.raises(ConfigError, match="one_shot pruning has exactly one level"):
        load_sweep(_write(tmp_path, SWEEP.replace("levels: 2", "levels: 2\n  style: one_shot")))
    no_section = SWEEP.replace("instability: {rewind: [20it], copies: 2, alphas: 3, splits: [test]}\n", "")
    with pytest.raises(ConfigError, match="imp.instability: needs an `instability` section"):
        load_sweep(_write(tmp_path, no_section))


@pytest.mark.parametrize("preset,style,expected", [
    ("lenet", None, 15), ("resnet20", None, 8), ("resnet20_low", None, 11), ("vgg16", None, 19),
    ("vgg16_low", None, 13), ("resnet50", None, 1), ("lenet", "one_shot", 1)])
def test_levels_default_to_the_presets_density(tmp_path, preset, style, expected):
    """Without imp.levels, IMP prunes down to the Table-1 density of the preset (0.8^15 for LeNet,
    1.5% for VGG-16: 19 levels give 1.44%), or one level for one-shot pruning."""
    from lmcsweep.config import PRESETS
    from lmcsweep.plan.imp import levels

    text = f"name: d\nexperiment: d\npreset: {preset}\nimp: {{rewind: [0it]" + (f", style: {style}" if style else "") + "}\n"
    plan = build_plan(load_sweep(_write(tmp_path, text)))
    assert levels(plan) == expected
    assert len([j for j in plan.jobs if j.kind == "prune"]) == expected + 1
    if style is None and expected > 1:
        density = PRESETS[preset].imp_density
        assert 0.8 ** expected <= density + 1e-9 < 0.8 ** (expected - 1)


def test_one_shot_reaches_target_density_in_one_level(tmp_path, imp_run):
    text = """\
    name: one-shot
    experiment: tests-imp
    preset: lenet
    data: {dataset: synthetic, synthetic: {shape: [1, 28, 28], classes: 10, train: 240, test: 100}}
    train: {iterations: 8it, batch_size: 60}
    imp: {levels: 1, style: one_shot, target_density: 0.1, rewind: [0it]}
    """
    sweep = load_sweep(_write(tmp_path, text))
    store_dir = imp_run[1]                   # the module's store: its MLflow schema exists already
    store = Store(store_dir)
    outcome = run_sweep(sweep, Tracker(root=store_dir), store, progress=False)
    assert not outcome.failed and len(outcome.computed) == 1 + 2 * 2
    level1 = _chains(build_plan(sweep))[(0, 0)][1]
    masks = torch.load(store.job_dir(level1.hash) / "mask.pt", weights_only=False)
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int(m.sum()) for m in masks.values()) - 0.1 * total) <= 1


# ------------------------------------------------------------------------------ the sweep


def test_imp_sweep_runs(imp_run):
    _, _, result = imp_run
    assert result.exit_code == 0, result.output
    # 2 train, dense: 2 x (2 branches + 1 interpolation), IMP: 2 x (4 + 2 x 10); of these, level 0's
    # 2 x (2 branches + 1 interpolation) are the dense ones (same_as) and are not trained again
    assert "50 jobs run, 6 reused from the store" in result.output and "0 failed" in result.output


def test_each_wave_trains_together(imp_run):
    """The networks of a wave (same depth in the job graph) train as one group across replicates,
    IMP levels' subnetworks and controls: 2 dense runs, 4 dense copies, 12 copies per level >= 1."""
    path, store_dir, _ = imp_run
    groups = {}
    for run in Tracker(root=store_dir).runs_of_sweep("imp-small", status="FINISHED"):
        t = run.data.tags
        if t.get("lmcsweep.origin") == "computed" and t.get("lmcsweep.kind") in ("train", "branch"):
            key = (t["lmcsweep.kind"], t.get("lmcsweep.level"))
            groups.setdefault(key, set()).add(run.data.params["train.group"])
    assert groups == {("train", None): {"2"}, ("branch", None): {"4"}, ("branch", "1"): {"12"},
                      ("branch", "2"): {"12"}}


def test_level_zero_reuses_the_dense_branches(imp_run):
    path, store_dir, _ = imp_run
    plan, store, tracker = build_plan(load_sweep(path)), Store(store_dir), Tracker(root=store_dir)
    runs = {r.data.tags["lmcsweep.job"]: r for r in tracker.runs_of_sweep("imp-small", status="FINISHED")
            if "lmcsweep.job" in r.data.tags}
    by_hash = plan.by_hash()
    twins = [j for j in plan.jobs if j.same_as]
    assert sorted(j.kind for j in twins) == ["branch"] * 4 + ["interpolate"] * 2
    for job in twins:
        twin = by_hash[job.same_as]
        assert job.tags["level"] == 0 and twin.tags.get("level") is None and twin.tags["replicate"] == job.tags["replicate"]
        run, original = runs[job.hash], runs[twin.hash]
        assert run.data.tags["lmcsweep.origin"] == "reused" and original.data.tags["lmcsweep.origin"] == "computed"
        assert run.data.tags["lmcsweep.reused_from"] == original.info.run_id
        assert run.data.tags["lmcsweep.same_as"] == twin.hash
        assert run.info.run_id != original.info.run_id and run.data.tags["lmcsweep.level"] == "0"
        imp_only = ("density", "accuracy_mean", "matching_std", "matching_02")   # what IMP adds
        shared = {k: v for k, v in run.data.metrics.items() if k not in imp_only}
        assert shared == original.data.metrics and shared
        if job.kind == "branch":
            assert run.data.metrics["density"] == 1.0
            mine, theirs = store.checkpoint_path(job.hash, T), store.checkpoint_path(twin.hash, T)
            assert mine.stat().st_ino == theirs.stat().st_ino          # one file, two names
    # a level-0 branch trained under the full mask (no dense twin in its store) is the dense branch bit for bit
    alone = SWEEP.replace("instability: {rewind: [20it], copies: 2, alphas: 3, splits: [test]}\n", "")
    alone = alone.replace("  instability: true\n", "").replace("levels: 2", "levels: 1").replace("replicates: 2", "replicates: 1")
    other = path.parent / "alone"
    other.mkdir(exist_ok=True)
    sweep = load_sweep(_write(other, alone))
    outcome = run_sweep(sweep, Tracker(root=other / "store"), Store(other / "store"), progress=False)
    level0 = next(j for j in build_plan(sweep).jobs if j.kind == "branch" and j.same_as)
    assert level0.hash in outcome.computed and not outcome.reused and not outcome.failed
    trained = Store(other / "store").load_checkpoint(level0.hash, T)["model"]
    dense = store.load_checkpoint(level0.same_as, T)["model"]
    assert trained.keys() == dense.keys() and all(torch.equal(trained[n], dense[n]) for n in dense)


def test_masks_through_the_levels(imp_run):
    path, store_dir, _ = imp_run
    plan, store = build_plan(load_sweep(path)), Store(store_dir)
    for prunes in _chains(plan).values():
        previous = None
        for p in prunes:
            masks = torch.load(store.job_dir(p.hash) / "mask.pt", weights_only=False)
            assert "fc.weight" not in masks                       # exempt: never masked
            assert set(masks) == {"layers.0.weight", "layers.1.weight"}
            if previous is None:
                assert all(m.all() for m in masks.values())
            else:
                before = sum(int(m.sum()) for m in previous.values())
                after = sum(int(m.sum()) for m in masks.values())
                assert before - after == round(0.2 * before)      # exactly fraction of the remaining
                assert all(not (masks[n] & ~previous[n]).any() for n in masks)   # shrinks, nested
                trained = store.load_checkpoint(p.spec.source, T)["model"]
                kept = torch.cat([trained[n][masks[n]].abs() for n in masks])
                pruned = torch.cat([trained[n][previous[n] & ~masks[n]].abs() for n in masks])
                assert kept.min() >= pruned.max()                  # globally the smallest
                assert max(prune.layer_densities(masks).values()) - min(prune.layer_densities(masks).values()) > 0.01
            for control in (None, "random_prune", "random_reinit"):
                for b in _branches(plan, p.hash, control):
                    weights = store.load_checkpoint(b.hash, T)["model"]
                    assert (weights["fc.weight"] != 0).all()          # the exempt layer trains freely
                    effective = masks if control != "random_prune" else \
                        prune.random_prune(masks, b.spec.control_seed)
                    for n, m in effective.items():               # SGD, momentum 0.9, weight decay
                        assert (weights[n][~m] == 0).all() and (weights[n][m] != 0).any()
                    assert prune.layer_densities(effective) == prune.layer_densities(masks)
            previous = masks


def test_rewind_and_controls_start_where_they_should(imp_run):
    path, store_dir, _ = imp_run
    plan = build_plan(load_sweep(path))
    ctx = Runner(Tracker(root=store_dir), Store(store_dir), progress=False).context(plan)
    ctx.tracker = type("NoTracking", (), {"log_metrics": lambda *a, **k: None})()
    p = _chains(plan)[(1, K)][2]
    imp_mask = ctx.store.load_masks(p.hash)
    train = plan.by_hash()[p.spec.train]
    at_k = ctx.store.load_checkpoint(train.hash, K)
    params_k = at_k["model"]

    imp = job_bodies.prepare_branch(ctx, _branches(plan, p.hash)[0], "run")
    assert imp.start == K and {n: torch.equal(imp.masks[n], imp_mask[n]) for n in imp_mask} == {n: True for n in imp_mask}
    state = imp.model.state_dict()
    for n, v in params_k.items():
        expected = v * imp_mask[n] if n in imp_mask else v
        assert torch.equal(state[n], expected), n                 # rewound to W_k, under the mask
    momentum = imp.optimizer.state_dict()["state"]                # optimizer: continue, masked
    names = [n for n, _ in imp.model.named_parameters()]
    for i, n in enumerate(names):
        expected = at_k["optimizer"]["state"][i]["momentum_buffer"]
        expected = expected * imp_mask[n] if n in imp_mask else expected
        assert torch.equal(momentum[i]["momentum_buffer"], expected), n

    rnd = job_bodies.prepare_branch(ctx, _branches(plan, p.hash, "random_prune")[0], "run")
    assert prune.layer_densities(rnd.masks) == prune.layer_densities(imp_mask)
    assert any(not torch.equal(rnd.masks[n], imp_mask[n]) for n in imp_mask)
    for n, m in rnd.masks.items():
        assert torch.equal(rnd.model.state_dict()[n], params_k[n] * m)

    branch = _branches(plan, p.hash, "random_reinit")[0]
    reinit = job_bodies.prepare_branch(ctx, branch, "run")
    assert all(torch.equal(reinit.masks[n], imp_mask[n]) for n in imp_mask)   # IMP's mask ...
    fresh = ctx.model(branch.spec.control_seed).state_dict()
    for n, v in reinit.model.state_dict().items():
        assert torch.equal(v, fresh[n] * imp_mask[n] if n in imp_mask else fresh[n])   # ... on new weights
        if v.dim() > 1:
            assert not torch.equal(v, params_k[n])                 # which differ from W_k
    assert not reinit.optimizer.state_dict()["state"]             # no momentum of other weights


def test_query_imp_records(imp_run):
    _, store, _ = imp_run
    records = json.loads(_invoke(store, "query", "--sweep", "imp-small", "--kind", "imp", "--format", "json").output)
    assert len(records) == 2 * (1 + 2 * 3)    # per replicate: level 0, and IMP + 2 controls at levels 1, 2
    seen = {(r["replicate"], r["level"], r["control"]) for r in records}
    assert seen == {(r, 0, None) for r in (0, 1)} | {(r, lv, c) for r in (0, 1) for lv in (1, 2)
                                                      for c in (None, "random_prune", "random_reinit")}
    dense = [r["accuracy"] for r in records if r["level"] == 0]
    for r in records:
        assert r["sweep"] == "imp-small" and r["rewind"] == K and r["preset"] == "lenet"
        assert r["density"] == pytest.approx(0.8 ** r["level"], abs=1e-3)
        assert 0 <= r["accuracy"] <= 1 and r["instability_train"] is None
        assert r["instability_test"] is not None and r["instability_test"] >= -1e-9
        group = [q["accuracy"] for q in records if (q["level"], q["control"]) == (r["level"], r["control"])]
        assert r["accuracy_mean"] == pytest.approx(sum(group) / 2)
        assert r["dense_accuracy"] == pytest.approx(sum(dense) / 2)
        std = float(torch.tensor(dense, dtype=torch.float64).std())
        assert r["dense_std"] == pytest.approx(std)
        assert r["matching_std"] == (r["accuracy_mean"] >= r["dense_accuracy"] - std - 1e-12)
        assert r["accuracy_median"] == pytest.approx(sorted(group)[0] / 2 + sorted(group)[1] / 2)
        assert r["matching_02"] == (r["accuracy_median"] >= r["dense_median"] - 0.002 - 1e-12)
    # matching is also logged on the runs at the end of the sweep
    tracker = Tracker(root=store)
    run = tracker.run(records[-1]["run_id"])
    assert run.data.metrics["matching_std"] == float(records[-1]["matching_std"])


def test_add_matching_definition():
    def rec(replicate, level, acc, control=None):
        return {"sweep": "s", "trial": None, "rewind": 0, "level": level, "control": control, "accuracy": acc,
                "replicate": replicate}

    records = [rec(0, 0, 0.90), rec(1, 0, 0.92), rec(0, 1, 0.905), rec(1, 1, 0.905),
               rec(0, 1, 0.91, "random_prune"), rec(1, 1, 0.919, "random_prune")]
    add_matching(records)
    std = float(torch.tensor([0.90, 0.92], dtype=torch.float64).std())   # 0.01414
    assert records[2]["dense_accuracy"] == pytest.approx(0.91) and records[2]["dense_std"] == pytest.approx(std)
    assert records[2]["matching_std"] is True and records[2]["matching_02"] is False   # 0.905 vs 0.908
    assert records[4]["matching_02"] is True                                          # 0.9145
    orphan = [rec(0, 3, 0.5)]
    add_matching(orphan)
    assert orphan[0]["matching_std"] is None
    # three replicates, one of them poor: the sweep's 0.2-point rule reads medians (0.909 vs 0.91),
    # the one-std rule means (0.8727 vs 0.92 - 0.0265)
    three = [rec(0, 0, 0.90), rec(1, 0, 0.91), rec(2, 0, 0.95), rec(0, 1, 0.909), rec(1, 1, 0.909), rec(2, 1, 0.80)]
    add_matching(three)
    assert three[3]["accuracy_median"] == pytest.approx(0.909) and three[3]["dense_median"] == pytest.approx(0.91)
    assert three[3]["matching_02"] is True and three[3]["matching_std"] is False


def test_rerun_does_nothing(imp_run):
    path, store, _ = imp_run
    result = _invoke(store, "run", "--no-progress", path)
    assert result.exit_code == 0 and "nothing to do (56 jobs already done)" in result.output


def test_resume_after_a_kill_retrains_only_the_lost_level(imp_run):
    path, store_dir, _ = imp_run
    sweep = load_sweep(path)
    plan, tracker, store = build_plan(sweep), Tracker(root=store_dir), Store(store_dir)
    level2 = _chains(plan)[(1, K)][2]
    lost = {level2.hash} | {j.hash for j in plan.jobs if j.tree_parent == level2.hash}
    lost |= {j.hash for j in plan.jobs if j.tree_parent in lost}
    before = {}
    for run in tracker.runs_of_sweep("imp-small"):         # as if the process died inside level 2
        job = run.data.tags["lmcsweep.job"] if "lmcsweep.job" in run.data.tags else None
        if job in lost:
            before[job] = run.data.metrics.get("final_test_accuracy")
            tracker.finish(run.info.run_id, "KILLED")
    (store.job_dir(level2.hash) / "mask.pt").unlink()
    outcome = run_sweep(sweep, tracker, store, progress=False)
    assert set(outcome.computed) == lost and len(lost) == 10 and not outcome.failed
    assert len(outcome.skipped) == 56 - 10
    after = {r.data.tags["lmcsweep.job"]: r.data.metrics.get("final_test_accuracy")
             for r in tracker.runs_of_sweep("imp-small", status="FINISHED") if r.data.tags.get("lmcsweep.job") in lost}
    assert after == before                                   # recomputed bit for bit
    records = json.loads(_invoke(store_dir, "query", "--sweep", "imp-small", "--kind", "imp", "--format", "json").output)
    assert len(records) == 14                                # the killed runs are not counted
