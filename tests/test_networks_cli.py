"""Issue 3 end to end: a shrunken ResNet-20 on synthetic CIFAR-shaped data through the CLI with
BatchNorm statistics re-estimated along the path, on both loaders; `lmcsweep presets`."""

import json

import pytest
from click.testing import CliRunner

from lmcsweep.cli import main

SWEEP = """\
name: {name}
experiment: tests
preset: resnet20
data:
  dataset: synthetic
  loader: {loader}
  synthetic: {{shape: [3, 32, 32], classes: 10, train: 256, test: 128, seed: 3}}
train: {{iterations: 24it, batch_size: 32, model: {{depth: 8, width: 4}}, eval_every: 12it}}
instability:
  rewind: [0it, 8it]
  copies: 2
  alphas: 4
  splits: [test]
  bn: {bn}
  bn_batches: 2
"""


def _records(store, write_sweep, loader, bn, name):
    path = write_sweep(SWEEP.format(name=name, loader=loader, bn=bn), filename=f"{name}.yaml")
    cli = lambda *args: CliRunner().invoke(main, ["--store", str(store), *map(str, args)])  # noqa: E731
    result = cli("run", "--no-progress", path)
    assert result.exit_code == 0, result.output
    return json.loads(cli("query", "--sweep", name, "--format", "json").output)


def test_resnet_bn_reset_and_loaders_agree(tmp_path, write_sweep):
    pytest.importorskip("ffcv")
    tensor = _records(tmp_path / "a", write_sweep, "tensor", "reset", "rn")
    assert len(tensor) == 2 and {r["rewind"] for r in tensor} == {0, 8}
    # a separate store, so that nothing is reused: the loader must not change a single bit
    ffcv = _records(tmp_path / "b", write_sweep, "ffcv", "reset", "rn")
    assert [(r["rewind"], r["instability"], r["error_endpoints"]) for r in tensor] == \
           [(r["rewind"], r["instability"], r["error_endpoints"]) for r in ffcv]
    # bn: interpolate evaluates the same trained pairs (reused by hash) with running statistics as trained
    interp = _records(tmp_path / "a", write_sweep, "tensor", "interpolate", "rn-interp")
    assert [r["error_endpoints"] for r in interp] != [r["error_endpoints"] for r in tensor]


def test_presets_command(cli):
    out = json.loads(cli("presets", "--format", "json").output)
    rows = {r["preset"]: r for r in out}
    assert rows["lenet"]["parameters"] == 266610
    assert abs(rows["vgg16"]["parameters"] - 14.7e6) < 0.1e6
    assert abs(rows["resnet50"]["parameters"] - 25.5e6) < 0.1e6
    assert rows["resnet20_warmup"]["warmup"] == "30000it" and rows["inception_v3"]["schedule"].startswith("linear")
