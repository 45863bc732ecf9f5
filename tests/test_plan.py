"""The planner: job counts of sweeps with a known structure, shared jobs counted once, search variants."""

from __future__ import annotations

import textwrap

from lmcsweep.config import load_sweep
from lmcsweep.sweep.plan import build_plan, summary
from lmcsweep.sweep.search import trial_plans

SWEEP = """\
name: counts
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 100it, batch_size: 60}
replicates: 2
instability: {rewind: [0it, 10it, 50it], copies: 3, alphas: 5}
"""


def _load(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_sweep(path)


def test_counts_of_a_known_structure(tmp_path):
    plan = build_plan(_load(tmp_path, SWEEP))
    s = summary([plan], done=set())
    # per replicate: 1 dense run; 3 rewind points x 3 copies; 3 rewind points x C(3, 2) pairs
    assert {k: row["jobs"] for k, row in s["kinds"].items()} == {"train": 2, "branch": 18, "interpolate": 18}
    assert s["jobs"] == s["remaining"] == 38 and s["done"] == 0
    # dense: 2 x 100; branches: 2 replicates x 3 copies x ((100-0) + (100-10) + (100-50))
    assert s["iterations_remaining"] == 2 * 100 + 2 * 3 * (100 + 90 + 50)
    # parents come before their children
    seen = set()
    for job in plan.jobs:
        assert all(p in seen for p in job.parents), job.name
        seen.add(job.hash)


def test_done_jobs_are_subtracted(tmp_path):
    plan = build_plan(_load(tmp_path, SWEEP))
    train = [j for j in plan.jobs if j.kind == "train"]
    s = summary([plan], done={train[0].hash})
    assert s["done"] == 1 and s["remaining"] == 37
    assert s["iterations_remaining"] == 100 + 2 * 3 * 240


def test_grid_search_plans_every_point_and_counts_shared_jobs_once(tmp_path):
    sweep = _load(tmp_path, SWEEP + textwrap.dedent("""\
        search:
          sampler: grid
          space: {train.lr: [0.0012, 0.002], instability.alphas: [3, 5]}
        """))
    plans = trial_plans(sweep)
    assert len(plans) == 4
    assert sorted((p.overrides["train.lr"], p.overrides["instability.alphas"]) for p in plans) == \
        [(0.0012, 3), (0.0012, 5), (0.002, 3), (0.002, 5)]
    s = summary(plans, done=set())
    # alphas only changes the interpolations: 2 learning rates of training, 4 variants of interpolation
    assert {k: row["jobs"] for k, row in s["kinds"].items()} == {"train": 4, "branch": 36, "interpolate": 72}
    # the variant with the base settings is the plain sweep itself: same jobs
    plain = {j.hash for j in build_plan(sweep).jobs}
    assert any({j.hash for j in p.jobs} == plain for p in plans)


def test_random_search_plans_trials_reproducibly(tmp_path):
    sweep = _load(tmp_path, SWEEP + textwrap.dedent("""\
        search:
          sampler: random
          trials: 3
          seed: 7
          space: {train.lr: {low: 0.0001, high: 0.01, log: true}, train.warmup: [0it, 20it]}
        """))
    first, again = trial_plans(sweep), trial_plans(sweep)
    assert len(first) == 3
    assert [p.overrides for p in first] == [p.overrides for p in again]
    for p in first:
        assert 0.0001 <= p.overrides["train.lr"] <= 0.01 and p.overrides["train.warmup"] in ("0it", "20it")
        assert p.hyper.lr == p.overrides["train.lr"]
        assert p.hyper.warmup == int(p.overrides["train.warmup"][:-2])


def test_cli_plan_and_dry_run(cli, tmp_path, store):
    path = tmp_path / "s.yaml"
    path.write_text(SWEEP)
    for args in (("plan", path), ("run", "--dry-run", path)):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[2:] if line.strip()}
        assert lines["train"] == ["2", "0", "2"] and lines["branch"] == ["18", "0", "18"]
        assert lines["total"] == ["38", "0", "38"]
        assert "training iterations left: 1640" in result.output
    assert not (store / "mlflow.db").exists()  # looking at a plan writes nothing
