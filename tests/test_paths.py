"""Metrics on the path (loss barrier, barriers against the straight line, disagreement, weight
distance), the backfill of interpolations finished before them, degenerate pairs (`trained`), and
tickets (`lmcsweep export`, `export.load_ticket`), end to end through the CLI on a slice of
Fashion-MNIST."""

from __future__ import annotations

import json
import math
import sqlite3
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lmcsweep import export, prune
from lmcsweep.cli import main
from lmcsweep.config import load_sweep
from lmcsweep.plan.build import build_plan
from lmcsweep.store import Store

SWEEP = """\
name: paths
experiment: tests-paths
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 40it, batch_size: 60, eval_every: 20it, checkpoint_every: 20it}
instability: {rewind: [20it], copies: 2, alphas: 4, splits: [test, train], train_examples: 300}
imp: {levels: 1, rewind: [20it], instability: true, controls: [random_reinit]}
"""
NEW = ["trained", "loss_barrier", "error_barrier_linear", "loss_barrier_linear", "disagreement",
       "l2_distance", "cosine_similarity"]


def _cli(store: Path, *args):
    return CliRunner().invoke(main, ["--store", str(store), *map(str, args)], catch_exceptions=False)


def _query(store: Path, name: str) -> list[dict]:
    result = _cli(store, "query", "--sweep", name, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("paths")
    path = folder / "sweep.yaml"
    path.write_text(SWEEP)
    store = folder / "store"
    result = _cli(store, "run", "--no-progress", path)
    assert result.exit_code == 0, result.output
    yield path, store
    torch.set_num_threads(threads)


def test_path_metrics_logged_and_queried(swept):
    path, store = swept
    records = _query(store, "paths")
    assert len(records) == 8  # dense, level 0 (reused), level 1, its control; 2 splits each
    for r in records:
        assert r["trained"] is True
        assert 0 <= r["disagreement"] <= 1 and r["l2_distance"] > 0 and -1 <= r["cosine_similarity"] <= 1
        assert r["error_barrier_linear"] >= 0 and r["loss_barrier_linear"] >= 0
    runs = [r for r in records if r["split"] == "test"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    for r in runs:
        if client.get_run(r["run_id"]).data.tags.get("lmcsweep.origin") == "reused":
            continue  # level 0: the dense interpolation's metrics, its curve.json with the dense run
        curve = json.loads(Path(client.download_artifacts(r["run_id"], "curve.json")).read_text())["test"]
        error, loss, alphas = curve["error"], curve["loss"], [i / 3 for i in range(4)]
        assert len(loss) == 4 and all(math.isfinite(v) for v in loss)
        assert r["instability"] == pytest.approx(max(error) - (error[0] + error[-1]) / 2, abs=1e-12)  # (rounded at 12 digits)
        assert r["loss_barrier"] == pytest.approx(max(loss) - (loss[0] + loss[-1]) / 2)
        line = max(v - (a * loss[-1] + (1 - a) * loss[0]) for a, v in zip(alphas, loss))
        assert r["loss_barrier_linear"] == pytest.approx(line)
        history = client.get_metric_history(r["run_id"], "loss_test")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(loss)
    # csv and the table carry the fields too
    csv = _cli(store, "query", "--sweep", "paths", "--format", "csv").output.splitlines()[0].split(",")
    assert all(f in csv for f in NEW)


def test_backfill_from_checkpoints(swept):
    """A store whose interpolation runs predate the path metrics (their rows deleted): the next run
    computes them from the stored checkpoints, retrains nothing and changes no hash or error."""
    path, store = swept
    before = _query(store, "paths")
    db = sqlite3.connect(store / "mlflow.db")
    keys = ["trained", "l2_distance", "cosine_similarity"] + [
        f"{k}_{s}" for k in ("loss", "loss_barrier", "loss_endpoints", "loss_max", "error_barrier_linear",
                             "loss_barrier_linear", "disagreement") for s in ("test", "train")]
    for table in ("metrics", "latest_metrics"):
        db.execute(f"DELETE FROM {table} WHERE key IN ({','.join('?' * len(keys))})", keys)
    db.commit()
    db.close()
    stripped = _query(store, "paths")
    assert all(r["loss_barrier"] is None and r["trained"] is None for r in stripped)
    result = _cli(store, "run", "--no-progress", path)
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output and "given the path metrics" in result.output
    after = _query(store, "paths")
    assert [r["run_id"] for r in after] == [r["run_id"] for r in before]
    for b, a in zip(before, after):
        assert a == pytest.approx(b)
    assert "given the path metrics" not in _cli(store, "run", "--no-progress", path).output


def test_ticket_export_and_load(swept):
    path, store = swept
    out = store.parent / "ticket.pt"
    result = _cli(store, "export", "paths", "--rewind", "20it", "--level", "1", "--out", out)
    assert result.exit_code == 0, result.output
    ticket = export.read_ticket(out)
    plan = build_plan(load_sweep(path))
    level = next(j for j in plan.jobs if j.kind == "prune" and j.tags["level"] == 1)
    train = next(j for j in plan.jobs if j.kind == "train")
    assert ticket["job"] == level.hash and ticket["level"] == 1 and ticket["rewind"] == 20
    assert ticket["seeds"] == train.spec.seeds and ticket["model"]["name"] == "lenet"
    masks = Store(store).load_masks(level.hash)
    assert ticket["density"] == pytest.approx(0.8, abs=0.01) == prune.density(masks)
    # the masked network at k, built the way the sweep's branches are, against the loaded ticket
    weights = Store(store).load_checkpoint(train.hash, 20)["model"]
    from lmcsweep.models import build_model

    ref = build_model("lenet", 10, (1, 28, 28), 0)
    ref.load_state_dict(weights)
    prune.apply_masks(ref, masks)
    net = export.load_ticket(out)
    x = torch.randn(16, 1, 28, 28)
    assert torch.equal(net(x), ref.eval()(x))
    # training keeps the subnetwork: a masked weight gets no update
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(net(x), torch.zeros(16, dtype=torch.long)).backward()
    opt.step()
    name = next(iter(masks))
    module = net.get_submodule(name.rpartition(".")[0])
    assert torch.all(module.weight[~masks[name]] == 0)
    # the same ticket is the level run's artifact
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tests-paths").experiment_id],
                             f"tags.`lmcsweep.job` = '{level.hash}'")[0]
    logged = export.read_ticket(client.download_artifacts(run.info.run_id, "ticket/ticket.pt"))
    assert all(torch.equal(logged["state_dict"][n], t) for n, t in ticket["state_dict"].items())
    # a control's ticket: fresh weights under IMP's mask
    result = _cli(store, "export", "paths", "--rewind", "20", "--level", "1", "--control", "random_reinit",
                  "--out", out)
    assert result.exit_code == 0, result.output
    reinit = export.read_ticket(out)
    assert reinit["control"] == "random_reinit" and torch.equal(reinit["mask"][name], masks[name])
    assert not torch.equal(reinit["state_dict"][name], ticket["state_dict"][name])
    # mistakes: one line, exit 2
    for args, words in [(("--level", "5"), "no IMP level 5"), (("--level", "1", "--rewind", "x"), "--rewind"),
                        (("--level", "1", "--replicate", "3"), "no IMP level")]:
        full = ["export", "paths", "--rewind", "20it", *args, "--out", out]
        result = _cli(store, *full)
        assert result.exit_code == 2 and words in result.output and len(result.output.strip().splitlines()) == 1
    result = _cli(store, "export", "nope", "--rewind", "20it", "--level", "1", "--out", out)
    assert result.exit_code == 2 and "no sweep 'nope'" in result.output


def test_hashes_unchanged(swept):
    """The seeds a level now records for its ticket are not part of its hash: the IMP and
    interpolation jobs keep the hashes of the revision before (pinned)."""
    path, _ = swept
    jobs = [j for j in build_plan(load_sweep(path)).jobs if j.kind in ("prune", "interpolate")]
    assert [j.hash for j in jobs] == ["interpolate_a044960c09779d88", "prune_92fee4f516083b6e",
                                      "interpolate_a5b42968fea7e731", "prune_7ba9ce3240e45a51",
                                      "interpolate_ebb8c941348eddbe", "interpolate_b2ddfeec718564a8"]
    level = next(j for j in jobs if j.kind == "prune")
    assert level.spec.parent_seeds and "parent_seeds" not in level.spec.identity()


COLLAPSE = """\
name: collapse
experiment: tests-paths
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 20it, batch_size: 60, optimizer: adam, eval_every: 20it, checkpoint_every: 20it}
instability: {rewind: [0it], copies: 2, alphas: 3, splits: [test]}
search:
  sampler: grid
  space: {train.lr: [1.2e-3, 1000.0]}
  objective: {metric: loss_barrier, split: test}
"""


def test_degenerate_pairs_flagged(tmp_path):
    """Adam at lr 1000 sends LeNet to chance: that pair is trained: false, not stable, and its trial's
    objective (which skips such pairs) has nothing to measure; the sane trial's is its loss barrier."""
    path = tmp_path / "collapse.yaml"
    path.write_text(textwrap.dedent(COLLAPSE))
    store = tmp_path / "store"
    _cli(store, "run", "--no-progress", path)
    records = {r["trial"]: r for r in _query(store, "collapse")}
    sane, collapsed = records[0], records[1]
    assert sane["trained"] is True and collapsed["trained"] is False
    assert collapsed["stable"] is False and collapsed["error_endpoints"] > 1 - 1.5 / 10
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    trials = {r.data.tags["lmcsweep.trial"]: r for r in client.search_runs(
        [client.get_experiment_by_name("tests-paths").experiment_id], "tags.`lmcsweep.kind` = 'trial'")}
    assert trials["0"].data.metrics["objective"] == pytest.approx(sane["loss_barrier"])
    assert "objective" not in trials["1"].data.metrics
