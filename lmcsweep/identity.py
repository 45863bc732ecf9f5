"""The identity of a job: canonical JSON of its inputs, its hash, and the revisions in it.

A job's hash (`job_hash`) covers its kind, the inputs that determine its result, its parents and
the revision of the arithmetic (`NUMERICS`); jobs whose training makes random draws besides the
data order also carry the revision of those draws (`DRAWS`, added by `config.Hyper.identity`).
Equal hashes mean the same result, so a store reuses a job's result wherever its hash recurs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from .steps import Step


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, Steps as text, tuples as lists, floats by repr."""

    def norm(x: Any) -> Any:
        if isinstance(x, Step):
            return str(x)
        if isinstance(x, BaseModel):
            return norm(x.model_dump(mode="json"))
        if isinstance(x, dict):
            return {str(k): norm(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [norm(v) for v in x]
        if isinstance(x, float) and x.is_integer():
            return float(x)
        return x

    return json.dumps(norm(obj), sort_keys=True, separators=(",", ":"))


# The revision of the arithmetic jobs compute with, part of every job's identity. Bumped when an
# update changes the numbers a job with the same inputs produces, so a store never mixes two
# revisions' results: an older revision's jobs are recomputed, not reused. 2: fused optimizers and,
# on CPU, one kernel thread per copy (`copies`).
NUMERICS = 2


# The revision of the random draws that training makes besides the data order, part of the identity
# of the jobs that make such draws only (`Hyper.identity`), so other jobs keep their hashes when it is
# raised. 2: each example's augmentation drawn by (seed, epoch, example), not by its place in a
# batch; dropout masks drawn from the augmentation seed, not torch's global generator.
DRAWS = 2
DROPOUT_MODELS = ("inception_v3",)  # networks with dropout (`models.SeededDropout`)


def job_hash(kind: str, fields: dict[str, Any], parents: list[str] | tuple[str, ...] = ()) -> str:
    """The identity of a job: a hash of its kind, the inputs that determine its result, its parents
    and the arithmetic's revision (`NUMERICS`)."""
    text = canonical({"kind": kind, "fields": fields, "parents": list(parents), "numerics": NUMERICS})
    return f"{kind}_{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def sweep_fingerprint(sweep: BaseModel) -> dict[str, Any]:
    """The resolved sweep (a `config.SweepConfig`) as JSON-able data (recorded on runs), less its
    `slurm` section (where workers run changes no result)."""
    return json.loads(sweep.model_dump_json(exclude={"slurm"}))
