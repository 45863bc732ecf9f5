"""`lmcsweep report` on a tiny instability search and a tiny IMP sweep with instability and both
controls, run through the CLI into one store: the page is self-contained (every image embedded),
has the expected figures with captions naming the replicate count (and notes for those without
data), trial hyperparameters in the labels, the data of each figure agrees with `lmcsweep query`
and the stored curve.json files, and the page and images are artifacts of the sweep's MLflow run."""

from __future__ import annotations

import json
import statistics
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from lmcsweep.cli import main
from lmcsweep.records.figures import earliest_from
from lmcsweep.records.objective import earliest_stable

SEARCH = """\
name: rep-search
experiment: tests-report
preset: lenet
data: {dataset: fashion_mnist, subset_train: 240, subset_test: 200}
train: {iterations: 40it, batch_size: 24, checkpoint_every: 20it, eval_every: 20it, model: {hidden: [16]}}
replicates: 2
instability: {rewind: [0it, 20it], copies: 2, alphas: 5, train_examples: 200}
search:
  sampler: grid
  space: {train.lr: [0.0012, 0.003]}
  objective: {metric: instability, split: test, rewind: 0it}
"""
IMP = """\
name: rep-imp
experiment: tests-report
preset: lenet
data: {dataset: fashion_mnist, subset_train: 300, subset_test: 200}
train: {iterations: 40it, batch_size: 30, optimizer: sgd, lr: 0.05, momentum: 0.9, eval_every: 20it,
        checkpoint_every: 20it, model: {hidden: [16]}}
replicates: 2
instability: {rewind: [0it, 20it], copies: 2, alphas: 5, splits: [test]}
imp: {levels: 1, rewind: [0it, 20it], instability: true, controls: [random_prune, random_reinit]}
"""


class Page(HTMLParser):
    """The page's figures (id -> caption, data), notes, and every src/href it refers to."""

    def __init__(self, text: str):
        super().__init__()
        self.refs, self.figures, self.notes, self.images = [], {}, [], 0
        self._in, self._section, self._data = None, None, None
        self.feed(text)

    def handle_starttag(self, name, attrs):
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href")]
        if name == "section":
            self._section = a["id"]
            self.figures[self._section] = {"caption": "", "data": None}
        elif name == "img":
            self.images += 1
        elif name == "figcaption":
            self._in = "caption"
        elif name == "script" and a.get("class") == "figure-data":
            self._in, self._data = "data", ""
        elif name == "p" and a.get("class") == "note":
            self.notes.append(a["data-figure"])

    def handle_endtag(self, name):
        if name == "script" and self._in == "data":
            self.figures[self._section]["data"] = json.loads(self._data)
        if name in ("figcaption", "script"):
            self._in = None

    def handle_data(self, data):
        if self._in == "caption":
            self.figures[self._section]["caption"] += data
        elif self._in == "data":
            self._data += data


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """Both sweeps run into one store and reported: (store, {sweep: (index path, Page)})."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("report")
    store = folder / "store"
    pages = {}
    for name, text in (("rep-search", SEARCH), ("rep-imp", IMP)):
        path = folder / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        run = CliRunner().invoke(main, ["--store", str(store), "run", "--no-progress", str(path)],
                                 catch_exceptions=False)
        assert run.exit_code == 0, run.output
        out = CliRunner().invoke(main, ["--store", str(store), "report", name, "--out", str(folder / "reports")],
                                 catch_exceptions=False)
        assert out.exit_code == 0, out.output
        index = Path(out.output.strip())
        pages[name] = (index, Page(index.read_text()))
    torch.set_num_threads(threads)
    return store, pages


def _query(store: Path, sweep: str, kind: str) -> list[dict]:
    out = CliRunner().invoke(main, ["--store", str(store), "query", "--sweep", sweep, "--kind", kind,
                                    "--format", "json"], catch_exceptions=False)
    return json.loads(out.output)


def test_pages_are_self_contained_with_the_expected_figures(reported):
    _, pages = reported
    for name, (index, page) in pages.items():
        assert page.refs and all(ref.startswith("data:image/png;base64,") for ref in page.refs), name
        assert page.images == len(page.figures)
        for fig, found in page.figures.items():
            assert "from 2 replicates" in found["caption"], (name, fig, found["caption"])
            assert (index.parent / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    search, imp = pages["rep-search"][1], pages["rep-imp"][1]
    assert set(search.figures) == {"instability", "trial0-path", "trial1-path"}
    assert set(search.notes) == {"controls", "onset", "sparsity"}  # no IMP: notes, not empty plots
    assert set(imp.figures) == {"instability", "path", "path-level0", "path-level1",
                                "controls-test", "onset", "sparsity"}
    assert imp.notes == []
    # a search's trials are labelled by their hyperparameters
    assert {r["hp"] for r in search.figures["trial0-path"]["data"]} == {"lr=0.0012"}
    assert {r["hp"] for r in search.figures["trial1-path"]["data"]} == {"lr=0.003"}
    text = pages["rep-search"][0].read_text()
    assert "trial 0 (lr=0.0012)" in text and "trial 1 (lr=0.003)" in text


def test_figure_data_is_the_stores(reported):
    store, pages = reported
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    records = _query(store, "rep-imp", "instability")
    figures = pages["rep-imp"][1].figures

    # instability vs k of the dense network: the query's records, each trial with its hyperparameters
    search = _query(store, "rep-search", "instability")
    drawn = pages["rep-search"][1].figures["instability"]["data"]
    assert sorted((r["trial"], r["replicate"], r["rewind"], r["split"], r["instability"], r["hp"]) for r in drawn) \
        == sorted((r["trial"], r["replicate"], r["rewind"], r["split"], r["instability"], f"lr={r['hp.train.lr']}")
                  for r in search if r["trained"] is not False)

    # instability vs k at each density, IMP beside both controls: means over the query's pairs
    groups = {}
    for r in records:
        if r["level"] is not None and r["trained"] is not False:
            groups.setdefault((r["level"], r["control"] or "imp", r["rewind"]), []).append(r["instability"])
    rows = figures["controls-test"]["data"]
    assert {(r["level"], r["control"], r["rewind"]) for r in rows} == set(groups)
    assert {r["control"] for r in rows} == {"imp", "random_prune", "random_reinit"}
    for r in rows:
        values = groups[(r["level"], r["control"], r["rewind"])]
        assert r["instability_mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert r["pairs"] == len(values) == 2 and r["replicates"] == 2

    # error along the path: the mean at each alpha of the curve.json of every pair
    dense = [r for r in records if r["level"] is None and r["trained"] is not False]
    for row in figures["path"]["data"]:
        runs = [r["run_id"] for r in dense if r["rewind"] == row["rewind"] and r["split"] == row["split"]]
        curves = [json.loads(Path(client.download_artifacts(run, "curve.json")).read_text()) for run in runs]
        assert row["alpha"] == curves[0]["alphas"] and row["pairs"] == len(runs) == 2
        expected = [statistics.fmean(c[row["split"]]["error"][i] for c in curves) for i in range(len(row["alpha"]))]
        assert row["error_mean"] == pytest.approx(expected, abs=1e-12)
    assert {r["rewind"] for r in figures["path"]["data"]} == {0, 20}

    # earliest stable / matching k: from the query's instability and matching
    imp = _query(store, "rep-imp", "imp")
    for row in figures["onset"]["data"]:
        key = (row["control"] if row["control"] != "imp" else None, row["level"])
        by_k = {}
        for r in records:
            if (r["control"], r["level"]) == key and r["split"] == "test" and r["trained"] is not False:
                by_k.setdefault(r["rewind"], []).append(r["instability"])
        stable = earliest_stable(by_k)
        assert row["earliest_stable"] == (None if stable == float("inf") else stable)
        matching = {r["rewind"]: r["matching_std"] for r in imp if (r["control"], r["level"]) == key}
        assert row["earliest_matching"] == earliest_from(matching)
        assert row["stable_rewinds"] == row["matching_rewinds"] == [0, 20]
    assert len(figures["onset"]["data"]) == 2 + 1 + 1  # IMP at levels 0 and 1, each control at level 1


def test_earliest_from_needs_every_later_point():
    assert earliest_from({0: False, 20: True, 100: True}) == 20
    assert earliest_from({0: True, 20: False, 100: True}) == 100
    assert earliest_from({0: True, 20: True}) == 0
    assert earliest_from({0: True, 20: False}) is None


def test_earliest_stable_k_uses_the_onset_searchs_threshold(tmp_path):
    """Fig. 9 reads "stable" with the threshold the report is given (an onset search's), not 2%:
    an IMP level at 1.5% instability at k=0 and 0.5% at k=20 is stable from 0 under 2%, from 20 under 1%."""
    from lmcsweep.records import charts
    from lmcsweep.records.report import write_report

    records = [{"sweep": "t", "trial": None, "replicate": rep, "level": 1, "density": 0.5, "rewind": k,
                "control": None, "split": "test", "instability": value, "trained": True, "run_id": f"r{rep}{k}"}
               for rep in (0, 1) for k, value in ((0, 0.015), (20, 0.005))]
    for threshold, earliest, words in ((None, 0, "the 2% stability threshold"),
                                       (0.01, 20, "the onset search's stability threshold, 1%")):
        index = write_report("t", records, [], tmp_path / str(threshold), {},
                             **({} if threshold is None else {"threshold": threshold}))
        text, onset = index.read_text(), Page(index.read_text()).figures["onset"]
        [row] = onset["data"]
        assert row["earliest_stable"] == earliest and row["stable_rewinds"] == [0, 20]
        assert f"below {words}" in onset["caption"]
        percent = "2%" if threshold is None else "1%"
        assert f"Earliest stable (instability &lt; {percent}) and earliest matching k" in text  # the title
        fig, _ = charts.onset_chart(onset["data"])
        assert fig.axes[0].get_legend_handles_labels()[1] == [f"IMP: stable (instability < {percent})"]


def test_report_is_logged_on_the_sweep_run(reported):
    store, pages = reported
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests-report").experiment_id
    for name, (index, page) in pages.items():
        (run,) = client.search_runs([experiment], f"tags.`lmcsweep.sweep` = '{name}' "
                                                  "and tags.`lmcsweep.kind` = 'sweep'")
        logged = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "report")}
        assert logged == {"index.html", "figures.json", *(f"{fig}.png" for fig in page.figures)}
        copy = Path(client.download_artifacts(run.info.run_id, "report/index.html"))
        assert copy.read_text() == index.read_text()
