"""Alignment end to end through the CLI on a slice of Fashion-MNIST: a grid over
`instability.init` (shared | different) and `instability.align` (weights | activations) records the
unaligned and the aligned barriers on each interpolation run, `query` returns both, the aligned
barrier is a search objective, the copies from different initialisations are jobs of their own that
a second run does not compute again, and mistakes in the new keys are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lmcsweep.cli import main
from lmcsweep.config import load_sweep
from lmcsweep.plan.build import build_plan

SWEEP = """\
name: aligned
experiment: tests-align
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 40it, batch_size: 60, eval_every: 20it, checkpoint_every: 20it, model: {hidden: [100, 50]}}
instability: {rewind: [0it], copies: 2, alphas: 4, splits: [test], align: weights, align_batches: 2}
search:
  sampler: grid
  space: {instability.init: [shared, different], instability.align: [weights, activations]}
  objective: {metric: aligned_instability, split: test}
"""


def _cli(store: Path, *args):
    return CliRunner().invoke(main, ["--store", str(store), *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("align")
    path = folder / "sweep.yaml"
    path.write_text(SWEEP)
    store = folder / "store"
    result = _cli(store, "run", "--no-progress", path)
    assert result.exit_code == 0, result.output
    # trials share the dense networks: each reuse is listed once, under its own trial
    reused = [n for line in result.output.splitlines() if line.startswith("  reused from")
              for n in line.split("): ", 1)[1].split(", ")]
    assert len(reused) == len(set(reused)) and any("(trial 1)" in n for n in reused), result.output
    yield path, store
    torch.set_num_threads(threads)


def test_aligned_and_unaligned_barriers_recorded(swept):
    path, store = swept
    result = _cli(store, "query", "--sweep", "aligned", "--format", "json")
    records = {(r["init"], r["align"]): r for r in json.loads(result.output)}
    assert set(records) == {(i, a) for i in ("shared", "different") for a in ("weights", "activations")}
    for (init, method), r in records.items():
        assert r["trained"] is True
        assert r["aligned_instability"] is not None and r["aligned_loss_barrier"] is not None
        # the unaligned numbers are the pair's whatever the method: the same branches, the same path
        other = records[(init, "activations" if method == "weights" else "weights")]
        assert r["instability"] == other["instability"] and r["loss_barrier"] == other["loss_barrier"]
    # weight matching maximises <W_A, P W_B> from the identity: it can only bring B closer to A
    for init in ("shared", "different"):
        r = records[(init, "weights")]
        assert r["aligned_l2_distance"] <= r["l2_distance"] + 1e-9
    # copies from different initialisations are far apart, shared-init copies at k = 0 are not
    assert records[("different", "weights")]["cosine_similarity"] < 0.2 < 0.9 < records[("shared", "weights")][
        "cosine_similarity"]
    assert records[("different", "weights")]["instability"] > records[("shared", "weights")]["instability"]
    # each trial's objective is its aligned barrier
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    ids = [client.get_experiment_by_name("tests-align").experiment_id]
    for run in client.search_runs(ids, "tags.`lmcsweep.kind` = 'trial'"):
        hp = {k: v for k, v in run.data.params.items() if k.startswith("hp.")}
        key = (hp["hp.instability.init"], hp["hp.instability.align"])
        assert run.data.metrics["objective"] == pytest.approx(records[key]["aligned_instability"])
    # curve.json: the aligned path and the check it passed, the batches' seed
    run = next(r for r in client.search_runs(ids, "tags.`lmcsweep.kind` = 'interpolate'")
               if r.data.tags.get("lmcsweep.align") == "activations" and r.data.tags.get("lmcsweep.init"))
    curve = json.loads(Path(client.download_artifacts(run.info.run_id, "curve.json")).read_text())["aligned"]
    assert curve["method"] == "activations" and curve["batches"] == 2 and isinstance(curve["seed"], int)
    assert 0 <= curve["check_difference"] <= curve["check_tolerance"]
    assert len(curve["test"]["error"]) == 4 and curve["moved"] > 0.5
    history = client.get_metric_history(run.info.run_id, "aligned_error_test")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(curve["test"]["error"])


def test_different_init_plans_own_jobs_and_resumes(swept):
    path, store = swept
    plain = path.parent / "plain.yaml"  # the sweep without its search, one variant at a time
    plain.write_text(SWEEP.split("search:")[0])
    shared = build_plan(load_sweep(plain, {"instability.init": "shared"}))
    different = build_plan(load_sweep(plain, {"instability.init": "different"}))
    none = build_plan(load_sweep(plain, {"instability.align": "none"}))
    sb = [j for j in shared.jobs if j.kind == "branch"]
    db = [j for j in different.jobs if j.kind == "branch"]
    assert sb[0].hash == db[0].hash  # copy 0 keeps the replicate's initialisation
    assert sb[1].hash != db[1].hash and db[1].spec.init_seed != sb[1].spec.init_seed == sb[0].spec.init_seed
    assert db[1].spec.identity()["init"] == db[1].spec.init_seed and "init" not in sb[1].spec.identity()
    interp = {p: next(j for j in plan.jobs if j.kind == "interpolate") for p, plan in
              (("shared", shared), ("none", none))}
    assert "align" not in interp["none"].spec.identity() and interp["shared"].hash != interp["none"].hash
    assert "align_batches" not in interp["shared"].spec.identity()  # (weight matching reads no batches)
    result = _cli(store, "run", "--no-progress", path)
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output


@pytest.mark.parametrize("edit, words", [
    ("instability: {rewind: [20it], copies: 2, init: different}", "bad.yaml:4: instability.rewind[0]: init: different trains"),
    ("instability: {rewind: [0it], align: sideways}", "instability.align"),
    ("instability: {rewind: [0it], align: weights}\ndata: {dataset: synthetic}\npreset: resnet50",
     "instability.align: alignment supports lenet, vgg16, resnet20, not resnet50"),
    ("instability: {rewind: [0it], init: different}\nimp: {levels: 1}", "instability.init: init: different is for dense"),
    ("instability: {rewind: [0it]}\nsearch: {space: {train.lr: [0.1]}, objective: {metric: aligned_instability}}",
     "aligned_instability needs instability.align"),
])
def test_mistakes_are_one_line(tmp_path, edit, words):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ntrain: {iterations: 40it}\n" + ("" if "preset:" in edit else "preset: lenet\n")
                    + edit + "\n")
    result = _cli(tmp_path / "store", "plan", path)
    assert result.exit_code == 2 and words in result.output, result.output


RESNET = """\
name: res
experiment: tests-align
preset: resnet20
data: {dataset: synthetic, synthetic: {shape: [3, 16, 16], train: 64, test: 32}}
train: {iterations: 6it, batch_size: 16, eval_every: 6it, checkpoint_every: 6it, model: {width: 4}}
instability: {rewind: [0it], copies: 2, alphas: 3, splits: [test], align: activations, align_batches: 2,
              init: different, bn: reset, bn_batches: 2}
"""


def test_resnet_aligned_through_the_cli(tmp_path):
    """ResNet-20 (residual streams, projection shortcuts, BatchNorm re-estimated along the path) on
    the synthetic data set: the aligned network passes its output check and both barriers are recorded."""
    path = tmp_path / "res.yaml"
    path.write_text(RESNET)
    store = tmp_path / "store"
    result = _cli(store, "run", "--no-progress", path)
    assert result.exit_code == 0 and "0 failed" in result.output, result.output
    [r] = json.loads(_cli(store, "query", "--sweep", "res", "--format", "json").output)
    assert (r["init"], r["align"]) == ("different", "activations")
    assert r["instability"] is not None and r["aligned_instability"] is not None
    assert r["aligned_l2_distance"] != r["l2_distance"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    curve = json.loads(Path(client.download_artifacts(r["run_id"], "curve.json")).read_text())["aligned"]
    assert 0 <= curve["check_difference"] <= curve["check_tolerance"] and curve["moved"] > 0.5


def test_report_draws_the_aligned_path_beside_the_unaligned(swept, tmp_path):
    path, store = swept
    result = _cli(store, "report", "aligned", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "aligned" / "figures.json").read_text())
    page = (tmp_path / "aligned" / "index.html").read_text()
    from mlflow.tracking import MlflowClient

    records = json.loads(_cli(store, "query", "--sweep", "aligned", "--format", "json").output)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    for r in records:  # one pair per trial: each figure's curve is that pair's stored curve
        trial = r["trial"]
        for name, key in ((f"trial{trial}-path", "error_test"), (f"trial{trial}-path-aligned", "aligned_error_test")):
            [row] = data[name]
            stored = [m.value for m in sorted(client.get_metric_history(r["run_id"], key), key=lambda m: m.step)]
            assert row["error_mean"] == stored and row["init"] == r["init"]
        assert data[f"trial{trial}-path-aligned"][0]["aligned"] == r["align"]
    assert "from different initialisations" in page and f"(align: {records[0]['align']})" in page
