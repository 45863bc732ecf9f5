"""Shared fixtures: small real sweeps on a slice of Fashion-MNIST, run through the real CLI
against a temporary SQLite store."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmcsweep.cli import main

SMALL_SWEEP = """\
name: {name}
experiment: tests
preset: lenet
data: {{dataset: fashion_mnist, subset_train: 600, subset_test: 300}}
train: {{iterations: 60it, batch_size: 60, eval_every: 30it, checkpoint_every: 20it}}
replicates: {replicates}
instability:
  rewind: [0it, 20it]
  copies: {copies}
  alphas: 5
  train_examples: 300
"""


@pytest.fixture
def write_sweep(tmp_path: Path):
    """write_sweep(text=None, **fields) -> path of a sweep file in a temp dir."""

    def write(text: str | None = None, name: str = "small", replicates: int = 1, copies: int = 2,
              filename: str = "sweep.yaml") -> Path:
        path = tmp_path / filename
        path.write_text(textwrap.dedent(text) if text else SMALL_SWEEP.format(name=name, replicates=replicates,
                                                                               copies=copies))
        return path

    return write


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def cli(store: Path):
    """cli(*args) -> click Result, run in-process against the temp store."""

    def invoke(*args: str):
        return CliRunner().invoke(main, ["--store", str(store), *map(str, args)], catch_exceptions=False)

    return invoke
