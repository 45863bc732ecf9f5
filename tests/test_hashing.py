"""Job hashes: pinned (so they cannot drift silently: a drift would orphan every store's finished
jobs) and sensitive to exactly the inputs that decide a job's result."""

from __future__ import annotations

import textwrap

import pytest

from lmcsweep.config import load_sweep
from lmcsweep.identity import job_hash
from lmcsweep.steps import Step
from lmcsweep.plan.build import build_plan

BASE = """\
name: pin
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 60it, batch_size: 60}
instability: {rewind: [0it, 20it], copies: 2, alphas: 5}
"""

# The jobs of BASE, parents first. Changing any of these is a breaking change of every store:
# do it only on purpose, with a note in docs/reproducibility.md (last: identity.NUMERICS 2, fused optimizers, and
# train.cpu_threads in the identity).
PINNED = [
    ("train", "train_fbcfb835bb45801a"),
    ("branch", "branch_b1b8001ebc54c94f"),
    ("branch", "branch_65c717c823e14938"),
    ("interpolate", "interpolate_e0feab00286985f4"),
    ("branch", "branch_3a65ac498f815fb3"),
    ("branch", "branch_66fb082d76fb8ff1"),
    ("interpolate", "interpolate_04ac7cb679061b5d"),
]


def hashes(tmp_path, text: str, name: str = "s.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return [j.hash for j in build_plan(load_sweep(path)).jobs]


def test_job_hash_of_literal_fields_is_pinned():
    assert job_hash("train", {"lr": 0.1, "steps": [Step(2000), "2ep"], "none": None}) == "train_fd4f3b5f47d7c94c"
    assert job_hash("branch", {"rewind": 0}, ["train_fbcfb835bb45801a"]) == "branch_4ce7f1b092f61074"


def test_plan_hashes_are_pinned(tmp_path):
    plan = build_plan(load_sweep(_write(tmp_path, BASE)))
    assert [(j.kind, j.hash) for j in plan.jobs] == PINNED


def _write(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("variant", [
    # defaults written out (the preset's lr, optimizer, batch; the schema's copies, splits, noise ...)
    BASE.replace("batch_size: 60}", "batch_size: 60, lr: 0.0012, optimizer: adam, warmup: 0it, momentum: 0.0, "
                                    "cpu_threads: 1}")
        .replace("alphas: 5}", "alphas: 5, splits: [test, train], noise: [data_order, augmentation], "
                               "optimizer: continue, bn: interpolate}"),
    # key order
    "instability: {alphas: 5, copies: 2, rewind: [0it, 20it]}\n"
    "train: {batch_size: 60, iterations: 60it}\n"
    "preset: lenet\nexperiment: tests\nname: pin\n"
    "data: {subset_test: 300, subset_train: 600, dataset: fashion_mnist}\n",
    # cadences, device, loader and paths, names
    BASE.replace("batch_size: 60}", "batch_size: 60, eval_every: 7it, checkpoint_every: 3it, device: cpu}")
        .replace("subset_test: 300}", "subset_test: 300, loader: tensor, root: /nowhere}")
        .replace("name: pin", "name: other").replace("experiment: tests", "experiment: elsewhere"),
    # a duration written as a bare number of iterations
    BASE.replace("iterations: 60it", "iterations: 60"),
])
def test_hash_ignores_what_does_not_matter(tmp_path, variant):
    assert hashes(tmp_path, variant, "v.yaml") == [h for _, h in PINNED]


@pytest.mark.parametrize("change, changed", [
    # training settings change every job
    (("batch_size: 60}", "batch_size: 60, lr: 0.002}"), {"train", "branch", "interpolate"}),
    (("iterations: 60it", "iterations: 80it"), {"train", "branch", "interpolate"}),
    (("subset_train: 600", "subset_train: 500"), {"train", "branch", "interpolate"}),
    # kernel threads on CPU change how weight gradients are summed: part of the identity
    (("batch_size: 60}", "batch_size: 60, cpu_threads: 2}"), {"train", "branch", "interpolate"}),
    # GPU kernels that may differ run to run: part of the identity when allowed
    (("batch_size: 60}", "batch_size: 60, deterministic: false}"), {"train", "branch", "interpolate"}),
    # the default written out changes nothing
    (("batch_size: 60}", "batch_size: 60, deterministic: true}"), set()),
    # the interpolation's own settings change only the interpolations
    (("alphas: 5", "alphas: 6"), {"interpolate"}),
    # which noise is varied changes the branches (their seeds) and so what follows them
    (("alphas: 5}", "alphas: 5, noise: [data_order]}"), {"branch", "interpolate"}),
])
def test_hash_follows_what_matters(tmp_path, change, changed):
    before = build_plan(load_sweep(_write(tmp_path, BASE)))
    after = build_plan(load_sweep(_write(tmp_path, BASE.replace(*change), "v.yaml")))
    assert len(before.jobs) == len(after.jobs)
    differ = {a.kind for a, b in zip(before.jobs, after.jobs) if a.hash != b.hash}
    same = {a.kind for a, b in zip(before.jobs, after.jobs) if a.hash == b.hash}
    assert differ == changed and not (same & changed)


def test_rewind_points_share_the_dense_network(tmp_path):
    base = build_plan(load_sweep(_write(tmp_path, BASE)))
    more = build_plan(load_sweep(_write(tmp_path, BASE.replace("[0it, 20it]", "[0it, 10it, 20it]"), "v.yaml")))
    assert base.jobs[0].hash == more.jobs[0].hash  # one dense run serves every k
    assert {j.hash for j in base.jobs} < {j.hash for j in more.jobs}


def test_random_draws_revision_marks_only_jobs_that_draw(tmp_path):
    """identity.DRAWS is in the identity of jobs with augmentation or dropout only: raising it leaves
    the hashes of jobs without such draws (LeNet on MNIST-like data: the pinned plan) alone."""
    from lmcsweep import config, identity

    cifar = BASE.replace("preset: lenet", "preset: resnet20").replace(
        "dataset: fashion_mnist, subset_train: 600, subset_test: 300", "dataset: cifar10")
    before = (hashes(tmp_path, BASE), hashes(tmp_path, cifar, "c.yaml"))
    assert config.resolve(load_sweep(_write(tmp_path, cifar, "c.yaml"))).identity()["draws"] == identity.DRAWS
    assert "draws" not in config.resolve(load_sweep(_write(tmp_path, BASE))).identity()
    identity.DRAWS += 1
    try:
        assert hashes(tmp_path, BASE) == before[0]
        assert not set(hashes(tmp_path, cifar, "c.yaml")) & set(before[1])
    finally:
        identity.DRAWS -= 1
