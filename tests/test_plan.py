"""The planner: job counts of sweeps with a known structure, shared jobs counted once, search variants."""

from __future__ import annotations

import textwrap

from lmcsweep.config import load_sweep
from lmcsweep.plan.build import build_plan
from lmcsweep.plan.graph import summary
from lmcsweep.search.study import trial_plans

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


# ------------------------------------------------------------------ instability.schedule and .pairs


def _with(text: str, **instability) -> str:
    """SWEEP with extra keys in its (flow-style) instability mapping."""
    extra = "".join(f", {k}: {v}" for k, v in instability.items())
    return text.replace("alphas: 5}", f"alphas: 5{extra}}}")


def test_restarted_schedule_trains_T_more_and_counts_it(tmp_path, cli):
    base = build_plan(_load(tmp_path, SWEEP))
    path = tmp_path / "restart.yaml"
    path.write_text(_with(SWEEP, schedule="restart"))
    plan = build_plan(load_sweep(path))
    assert [j.kind for j in plan.jobs] == [j.kind for j in base.jobs]
    for job in plan.jobs:
        if job.kind == "branch":
            k = job.spec.rewind
            assert job.iterations == 100 and job.spec.end == k + 100
            assert job.spec.lr_offset == k
    # every branch trains T = 100 iterations: 2 replicates x 3 rewind points x 3 copies
    assert summary([plan], set())["iterations_remaining"] == 2 * 100 + 2 * 3 * 3 * 100
    result = cli("plan", path)
    assert result.exit_code == 0 and "training iterations left: 2000" in result.output, result.output


def test_restart_enters_the_hash_only_where_it_changes_the_result(tmp_path):
    base = build_plan(_load(tmp_path, SWEEP))
    written = build_plan(_load(tmp_path, _with(SWEEP, schedule="continue", pairs="all"), "w.yaml"))
    assert [j.hash for j in written.jobs] == [j.hash for j in base.jobs]  # defaults written out
    restart = build_plan(_load(tmp_path, _with(SWEEP, schedule="restart"), "r.yaml"))
    for old, new in zip(base.jobs, restart.jobs):
        if old.kind == "train" or old.tags.get("rewind") == 0:
            # k = 0: the schedule restarted at 0 is the schedule: the same jobs, shared with `continue`
            assert new.hash == old.hash and new.spec.identity() == old.spec.identity(), old.name
        elif old.kind == "branch":
            assert new.hash != old.hash and new.spec.identity() == {**old.spec.identity(), "schedule": "restart"}, old.name
        else:  # an interpolation: other branches, so another job
            assert new.hash != old.hash and new.spec.pair != old.spec.pair, old.name
    both = build_plan(_load(tmp_path, _with(SWEEP, schedule="restart", optimizer="restart"), "b.yaml"))
    k10 = [j for j in both.jobs if j.kind == "branch" and j.spec.rewind == 10]
    assert k10 and all(j.spec.optimizer == "restart" and j.spec.schedule == "restart" for j in k10)
    assert not {j.hash for j in k10} & {j.hash for j in restart.jobs}


def test_imp_follows_the_restarted_schedule(tmp_path):
    text = _with(SWEEP, schedule="restart") + textwrap.dedent("""\
        imp: {levels: 1, rewind: [10it], instability: true, controls: [random_reinit]}
        """)
    plan = build_plan(_load(tmp_path, text))
    imp = [j for j in plan.jobs if j.kind == "branch" and j.spec.mask is not None]
    assert len(imp) == 2 * 3 * 3  # 2 replicates x (level 0, level 1, its control) x 3 copies
    assert all(j.spec.schedule == "restart" and j.iterations == 100 for j in imp)
    dense = {j.hash for j in plan.jobs if j.kind == "branch" and j.spec.mask is None}
    level0 = [j for j in imp if j.tags["level"] == 0]
    assert level0 and all(j.same_as in dense for j in level0)  # still the dense branches' twins


def test_disjoint_pairs(tmp_path):
    four = SWEEP.replace("copies: 3", "copies: 4")
    every = build_plan(_load(tmp_path, four))
    disjoint = build_plan(_load(tmp_path, _with(four, pairs="disjoint"), "d.yaml"))
    interps = [j for j in disjoint.jobs if j.kind == "interpolate"]
    # copies / 2 interpolations per replicate and rewind point, pairs sharing no copy
    assert len(interps) == 2 * 3 * 2
    assert sorted({j.tags["pair"] for j in interps}) == ["0-1", "2-3"]
    for r in range(2):
        for k in (0, 10, 50):
            pairs = [j.spec.pair for j in interps if (j.tags["replicate"], j.tags["rewind"]) == (r, k)]
            assert len(pairs) == 2 and len({h for p in pairs for h in p}) == 4
    assert len([j for j in every.jobs if j.kind == "interpolate"]) == 2 * 3 * 6
    # the same branches; its interpolations are some of `all`'s, under the same hashes
    assert [j.hash for j in disjoint.jobs if j.kind != "interpolate"] == \
        [j.hash for j in every.jobs if j.kind != "interpolate"]
    assert {j.hash for j in interps} < {j.hash for j in every.jobs}


def test_disjoint_pairs_need_an_even_number_of_copies(tmp_path, cli):
    path = tmp_path / "odd.yaml"
    path.write_text(SWEEP.replace("instability: {rewind: [0it, 10it, 50it], copies: 3, alphas: 5}",
                                  "instability:\n  rewind: [0it, 10it, 50it]\n  pairs: disjoint\n"
                                  "  copies: 3\n  alphas: 5\n"))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}:10: instability.copies: pairs: disjoint compares copies (0,1), (2,3), ...: needs an " \
           "even number of copies, got 3" in result.output, result.output
    path.write_text(path.read_text().replace("copies: 3", "copies: 4"))
    assert cli("validate", path).exit_code == 0
