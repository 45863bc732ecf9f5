"""The documentation cannot drift from the code: every key of the sweep-file schema has a row in
docs/sweep-file.md (and every row is a key), and the README's quickstart table is what the
quickstart gives, within the tolerance the README states."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from lmcsweep.config.schema import SweepConfig

ROOT = Path(__file__).resolve().parents[1]


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (through Optional, Union, Annotated, list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def schema_keys(model: type[BaseModel] = SweepConfig, prefix: str = "") -> set[str]:
    """Every dotted key a sweep file can hold; a mapping's free keys are written `<key>`."""
    keys = set()
    for name, field in model.model_fields.items():
        key = prefix + name
        keys.add(key)
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:
            for sub in _models_in(typing.get_args(annotation)[1]):
                keys |= schema_keys(sub, key + ".<key>.")
        else:
            for sub in _models_in(annotation):
                keys |= schema_keys(sub, key + ".")
    return keys


def documented_keys(text: str) -> set[str]:
    """The keys in the first column of the reference tables: rows starting ``| `key` |``."""
    return set(re.findall(r"^\| `([A-Za-z_<>.]+)` \|", text, flags=re.M))


def test_sweep_file_reference_has_every_schema_key_and_no_other():
    keys = schema_keys()
    assert {"data.subset_test", "train.cpu_threads", "search.space.<key>.log", "data.synthetic.seed"} <= keys
    documented = documented_keys((ROOT / "docs" / "sweep-file.md").read_text())
    assert not keys - documented, f"schema keys missing from docs/sweep-file.md: {sorted(keys - documented)}"
    assert not documented - keys, f"docs/sweep-file.md names keys the schema lacks: {sorted(documented - keys)}"


def test_sweep_file_example_is_valid(cli, tmp_path):
    example = re.search(r"```yaml\n(.*?)```", (ROOT / "docs" / "sweep-file.md").read_text(), flags=re.S)
    path = tmp_path / "example.yaml"
    path.write_text(example.group(1))
    result = cli("validate", path)
    assert result.exit_code == 0 and "ok (lenet-fashion" in result.output, result.output


# --- the README's quickstart table -------------------------------------------------------------

NUMERIC = ("instability", "error_endpoints", "error_max", "loss_barrier", "error_barrier_linear",
           "loss_barrier_linear", "disagreement", "l2_distance", "cosine_similarity")
KEYS = ("replicate", "rewind", "split", "pair")


def readme_quickstart() -> tuple[list[dict[str, str]], dict[str, float]]:
    """The rows of the README's quickstart table and its per-column tolerances (both parsed from
    README.md, so the test checks what a reader reads)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart-table -->\s*```\n(.*?)```", text, flags=re.S)
    assert block, "README.md has no quickstart table after <!-- quickstart-table -->"
    header, *lines = block.group(1).strip().splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows.append(dict(zip(names, cells)))
    tolerances = {}
    for column, value in re.findall(r"^\| `(\w+)` \| ± ?([0-9.]+) \|", text, flags=re.M):
        tolerances[column] = float(value)
    return rows, tolerances


def test_readme_table_parses():
    rows, tolerances = readme_quickstart()
    assert len(rows) == 8 and {r["split"] for r in rows} == {"test", "train"}
    assert set(NUMERIC) <= set(tolerances)


def test_quickstart_gives_the_readme_table_within_its_tolerance(tmp_path):
    """Runs `lmcsweep run sweeps/quickstart.yaml` as a user would (a subprocess, a fresh store)."""
    rows, tolerances = readme_quickstart()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "lmcsweep.cli", "--store", str(tmp_path / "store")]
    run = subprocess.run([*base, "run", "--no-progress", str(ROOT / "sweeps" / "quickstart.yaml")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    query = subprocess.run([*base, "query", "--sweep", "quickstart", "--format", "json"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert query.returncode == 0, query.stderr
    off = cells_off(rows, tolerances, json.loads(query.stdout))
    assert not off, "\n".join(off)


def cells_off(rows: list[dict[str, str]], tolerances: dict[str, float], records: list[dict]) -> list[str]:
    """The cells of `records` (query's JSON) further from the README's `rows` than its tolerances."""
    got = {tuple(str(r[k]) for k in KEYS): r for r in records}
    assert len(got) == len(rows)
    off = []
    for row in rows:
        record = got[tuple(row[k] for k in KEYS)]
        if str(record["trained"]) != row["trained"]:
            off.append(f"trained at {dict((k, row[k]) for k in KEYS)}: README {row['trained']}, "
                       f"here {record['trained']}")
        for column in NUMERIC:
            diff = abs(float(record[column]) - float(row[column]))
            if diff > tolerances[column]:
                off.append(f"{column} at {dict((k, row[k]) for k in KEYS)}: README {row[column]}, "
                           f"here {record[column]:.4f} (tolerance {tolerances[column]})")
    return off
