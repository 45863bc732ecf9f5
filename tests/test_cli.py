"""End to end through the CLI on a small real slice of Fashion-MNIST and a temporary SQLite store."""

import json
from pathlib import Path

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from lmcsweep.cli import main


def test_validate_reports_errors_and_writes_nothing(cli, write_sweep, store):
    bad = write_sweep("name: x\nexperiment: e\npreset: lenet\ntrain: {iterations: 10it}\n"
                      "instability: {rewind: [0it, 50it], alphas: 1}\n")
    for command in ("validate", "run", "plan"):
        result = CliRunner().invoke(main, ["--store", str(store), command, str(bad)])
        assert result.exit_code == 2, result.output
        assert f"{bad}:5: instability.alphas:" in result.output
        assert f"{bad}:5: instability.rewind[1]: rewind point 50it" in result.output
    assert not store.exists()


def test_validate_ok(cli, write_sweep):
    result = cli("validate", write_sweep())
    assert result.exit_code == 0 and "ok" in result.output


def test_run_query_and_mlflow_tree(cli, write_sweep, store):
    path = write_sweep(replicates=1, copies=3)
    result = cli("run", "--no-progress", path)
    assert result.exit_code == 0, result.output

    records = json.loads(cli("query", "--sweep", "small", "--format", "json").output)
    # 2 rewind points x 3 pairs x 2 splits
    assert len(records) == 12
    assert {r["rewind"] for r in records} == {0, 20} and {r["split"] for r in records} == {"test", "train"}
    for r in records:
        assert abs(r["instability"] - (r["error_max"] - r["error_endpoints"])) < 1e-9
        assert r["stable"] == (r["instability"] < 0.02)
        assert r["preset"] == "lenet" and r["dataset"] == "fashion_mnist" and r["replicate"] == 0
    table = cli("query", "--sweep", "small").output
    assert table.splitlines()[0].split()[:3] == ["sweep", "trial", "preset"]
    csv = cli("query", "--format", "csv").output.splitlines()
    assert len(csv) == 13 and csv[0].startswith("sweep,run_id,")

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tests")
    assert exp.artifact_location.startswith((store / "artifacts").resolve().as_uri())
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}
    by_kind = {}
    for r in runs.values():
        by_kind.setdefault(r.data.tags["lmcsweep.kind"], []).append(r)
    assert {k: len(v) for k, v in by_kind.items()} == {"sweep": 1, "train": 1, "branch": 6, "interpolate": 6}
    sweep_run, train_run = by_kind["sweep"][0], by_kind["train"][0]
    assert "mlflow.parentRunId" not in sweep_run.data.tags
    assert train_run.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
    for r in runs.values():
        t = r.data.tags
        assert r.info.status == "FINISHED"
        assert t["lmcsweep.sweep"] == "small" and t["lmcsweep.preset"] == "lenet"
        assert t["lmcsweep.dataset"] == "fashion_mnist"
        if t["lmcsweep.kind"] != "sweep":
            assert t["lmcsweep.job"].startswith(t["lmcsweep.kind"] + "_") and t["lmcsweep.replicate"] == "0"
            assert "version.torch" in r.data.params and "git_commit" in r.data.params
    for r in by_kind["branch"]:
        assert r.data.tags["mlflow.parentRunId"] == train_run.info.run_id
        assert r.data.tags["lmcsweep.rewind"] in ("0", "20")
        assert {"seed.data_order", "seed.augmentation"} <= set(r.data.params)
    seeds = {(r.data.tags["lmcsweep.rewind"], r.data.params["seed.data_order"]) for r in by_kind["branch"]}
    assert len(seeds) == 6  # every copy its own data order
    assert train_run.data.params["seed.init"] == "0"
    history = client.get_metric_history(train_run.info.run_id, "loss")
    assert len(history) > 3 and history[-1].value < history[0].value
    assert client.get_metric_history(train_run.info.run_id, "test_accuracy")
    for r in by_kind["interpolate"]:
        parent = runs[r.data.tags["mlflow.parentRunId"]]
        assert parent.data.tags["lmcsweep.kind"] == "branch"
        assert parent.data.tags["lmcsweep.rewind"] == r.data.tags["lmcsweep.rewind"]
        curve = client.get_metric_history(r.info.run_id, "error_test")
        assert sorted(m.step for m in curve) == list(range(5))
        assert {"instability_test", "instability_train"} <= set(r.data.metrics)
        files = {f.path for f in client.list_artifacts(r.info.run_id)}
        assert {"curve.json", "curve.png"} <= files
        local = Path(client.download_artifacts(r.info.run_id, "curve.json"))
        saved = json.loads(local.read_text())
        assert saved["test"]["error"] == [m.value for m in sorted(curve, key=lambda m: m.step)]

    again = cli("run", "--no-progress", path)
    assert again.exit_code == 0 and "nothing to do" in again.output

    out = store.parent / "reports"
    index = Path(cli("report", "small", "--out", out).output.strip())
    page = index.read_text()
    assert page.split("<h2>Instability records</h2>")[1].count("<tr>") == 1 + len(records)
    assert (index.parent / "instability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli("report", "no-such-sweep", "--out", out).exit_code == 2


def test_reruns_are_bit_identical(tmp_path, write_sweep):
    path = write_sweep(replicates=1, copies=2)
    outputs = []
    for name in ("a", "b"):
        runner = CliRunner()
        store = tmp_path / name
        assert runner.invoke(main, ["--store", str(store), "run", "--no-progress", str(path)]).exit_code == 0
        out = json.loads(runner.invoke(main, ["--store", str(store), "query", "--format", "json"]).output)
        outputs.append([(r["rewind"], r["split"], r["instability"], r["error_endpoints"]) for r in out])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 4


def test_console_script_exit_codes_and_output(write_sweep, store, tmp_path):
    """The console script skips the interpreter's teardown (`cli.entry`): exit codes and all the
    output still come through."""
    import subprocess
    import sys

    bad = write_sweep("name: x\nexperiment: e\npreset: lenet\ntrain: {iterations: 10it}\n"
                      "instability: {rewind: [0it, 50it], alphas: 1}\n", filename="bad.yaml")
    good = write_sweep()

    def lmc(*args):
        return subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), *map(str, args)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)

    out = lmc("validate", bad)
    assert out.returncode == 2 and f"{bad}:5: instability.alphas:" in out.stderr, out
    out = lmc("plan", good)
    assert out.returncode == 0 and out.stdout.splitlines()[-3].split()[0] == "total", out
    assert "time left: no measurements of this network in the store" in out.stdout, out
    out = lmc("status", "nope")
    assert out.returncode == 2 and "no sweep 'nope'" in out.stdout, out
    out = lmc("no-such-command")
    assert out.returncode == 2 and "No such command" in out.stderr, out


def test_run_imports_neither_mlflow_nor_dynamo(write_sweep, store, tmp_path):
    """What keeps `lmcsweep run` quick to start: its own process (and its forked copy workers)
    never import mlflow (the tracking process does) nor torch._dynamo (`optim.Fused`)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "lmcsweep.cli", "--store", str(store), "run",
                          "--no-progress", str(write_sweep())], capture_output=True, text=True, cwd=tmp_path,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "lmcsweep.run.bodies" in imported  # the check sees this process's imports
    assert not {m for m in imported if m.split(".")[0] == "mlflow" or m.startswith("torch._dynamo")}
    assert "0 failed" in out.stdout, out.stdout


def test_query_shows_the_current_definition_of_an_edited_sweep(cli, write_sweep, store):
    """A sweep edited (alphas 5 -> 3) and run again keeps the old interpolations in the store; query
    and report read only the jobs of the file it was last run with (--superseded: all of them)."""
    path = write_sweep()
    assert cli("run", "--no-progress", path).exit_code == 0
    first = json.loads(cli("query", "--sweep", "small", "--format", "json").output)
    path.write_text(path.read_text().replace("alphas: 5", "alphas: 3"))
    result = cli("run", "--no-progress", path)
    assert result.exit_code == 0 and "2 jobs run" in result.output, result.output   # the 2 interpolations
    now = json.loads(cli("query", "--sweep", "small", "--format", "json").output)
    everything = json.loads(cli("query", "--sweep", "small", "--format", "json", "--superseded").output)
    assert len(first) == len(now) == 4 and len(everything) == 8
    assert not {r["run_id"] for r in now} & {r["run_id"] for r in first}
    assert {r["run_id"] for r in everything} == {r["run_id"] for r in first} | {r["run_id"] for r in now}
    assert {r["run_id"] for r in everything if r["superseded"]} == {r["run_id"] for r in first}
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    assert all(len(client.get_metric_history(r["run_id"], "error_test")) == 3 for r in now)
    # back to the first version: nothing runs, and its records are the current ones again
    path.write_text(path.read_text().replace("alphas: 3", "alphas: 5"))
    assert "nothing to do" in cli("run", "--no-progress", path).output
    again = json.loads(cli("query", "--sweep", "small", "--format", "json").output)
    assert {r["run_id"] for r in again} == {r["run_id"] for r in first}
    # an unknown sweep, or a store where nothing ran, is an error (exit 2) and creates nothing
    assert cli("query", "--sweep", "nosuch").exit_code == 2
    empty = CliRunner().invoke(main, ["--store", str(store.parent / "none"), "query", "--format", "csv"])
    assert empty.exit_code == 2 and "nothing has run" in empty.output
    assert not (store.parent / "none").exists()


def test_missing_data_set_and_busy_sweep_are_clear_errors(cli, write_sweep, store, tmp_path, monkeypatch):
    """Exit 2 with the message alone: a data set that is not there (and no run is made, so a
    finished sweep's current definition stays what it was), and a sweep another runner holds."""
    import fcntl

    monkeypatch.delenv("LMCSWEEP_DATA", raising=False)
    path = write_sweep("name: m\nexperiment: e\npreset: lenet\ndata: {dataset: mnist}\n"
                       "train: {iterations: 40it}\ninstability: {rewind: [0it]}\n")
    result = CliRunner().invoke(main, ["--store", str(store), "run", "--no-progress", str(path)])
    assert result.exit_code == 2 and "data set 'mnist' not found" in result.output, result.output
    assert "Traceback" not in result.output
    assert cli("status").output.strip() == f"no sweeps in store {store.resolve()}"

    small = write_sweep(filename="small.yaml")
    lock = store / "locks" / "small.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = CliRunner().invoke(main, ["--store", str(store), "run", "--no-progress", str(small)])
    assert result.exit_code == 2 and "already running against this store" in result.output, result.output


def test_dense_loss_curve_does_not_depend_on_the_rewind_points(write_sweep, tmp_path):
    """The dense job is the same job (hash) whatever rewind points a sweep saves from it, and so is
    its logged loss curve: a pause for a rewind checkpoint does not cut a loss window."""
    curves = {}
    for rewind in ("[0it, 30it]", "[0it, 50it]"):  # neither is on the loss-window grid (every 4 iterations)
        path = write_sweep(filename=f"s{rewind[5:7]}.yaml")
        path.write_text(path.read_text().replace("rewind: [0it, 20it]", f"rewind: {rewind}").replace(
            "iterations: 60it, batch_size: 60, eval_every: 30it, checkpoint_every: 20it",
            "iterations: 200it, batch_size: 60, eval_every: 100it, checkpoint_every: 100it"))
        store = tmp_path / f"store{rewind[5:7]}"
        result = CliRunner().invoke(main, ["--store", str(store), "run", "--no-progress", str(path)])
        assert result.exit_code == 0, result.output
        client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
        exp = client.get_experiment_by_name("tests")
        (train,) = client.search_runs([exp.experiment_id], "tags.`lmcsweep.kind` = 'train'")
        curves[rewind] = (train.data.tags["lmcsweep.job"],
                          sorted((m.step, m.value) for m in client.get_metric_history(train.info.run_id, "loss")))
    (job_a, loss_a), (job_b, loss_b) = curves.values()
    assert job_a == job_b and loss_a == loss_b
    assert {step for step, _ in loss_a} == set(range(4, 201, 4))
