"""Defaults that work offline: a data set that is not on the machine is caught by `validate`, with
what to do; `experiment` defaults to the sweep's name (the same sweep as one that says so)."""

from __future__ import annotations

from lmcsweep.config import load_sweep
from lmcsweep.identity import sweep_fingerprint
from lmcsweep.plan.build import build_plan


def test_validate_catches_a_data_set_not_on_the_machine(cli, write_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("LMCSWEEP_DATA", str(tmp_path / "data"))  # no mnist there
    path = write_sweep("name: lenet-mnist\npreset: lenet\nreplicates: 1\n")  # LeNet's default: MNIST
    result = cli("validate", path)
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith(f"{path}:2: preset: data set 'mnist' is not on this machine")
    assert "data.dataset: fashion_mnist" in line and "data.download: true" in line and "\n" not in line
    other = write_sweep("name: c\npreset: lenet\ndata:\n  dataset: cifar10\n", filename="c.yaml")
    assert cli("validate", other).output.startswith(f"{other}:4: data.dataset: data set 'cifar10'")
    ok = write_sweep("name: f\npreset: lenet\ndata: {dataset: fashion_mnist}\n", filename="f.yaml")
    result = cli("validate", ok)
    assert result.exit_code == 0 and "ok (f, preset lenet)" in result.output


def test_experiment_defaults_to_the_sweeps_name(write_sweep):
    text = "name: small\n{}preset: lenet\ndata: {{dataset: fashion_mnist}}\ninstability: {{rewind: [0it]}}\n"
    implicit = load_sweep(write_sweep(text.format(""), filename="a.yaml"))
    explicit = load_sweep(write_sweep(text.format("experiment: small\n"), filename="b.yaml"))
    other = load_sweep(write_sweep(text.format("experiment: lmc\n"), filename="c.yaml"))
    assert implicit.experiment == "small" and other.experiment == "lmc"
    assert sweep_fingerprint(implicit) == sweep_fingerprint(explicit)
    assert [j.hash for j in build_plan(implicit).jobs] == [j.hash for j in build_plan(other).jobs]
