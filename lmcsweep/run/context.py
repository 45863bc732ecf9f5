"""What a job body runs with: the `Context` of its plan (sweep, resolved settings, data, store,
tracker, device), the data sets a process has read (`Datasets`), and the device and provenance
recorded on every run.

A context belongs to the process that made it; an executor that runs bodies elsewhere (a forked
worker) gives that process its own writer and tracker (`executors.pool`).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Hyper, SweepConfig
from ..identity import canonical
from ..data import DataSet, load_dataset, make_loader
from ..models import build_model
from ..store import Store, Writer
from ..tracking import Tracker
from ..train import evaluate


def pick_device(name: str) -> torch.device:
    """The device `train.device` names ("auto": a GPU where there is one). Before CUDA starts, the
    cuBLAS workspace setting its deterministic kernels need (train.deterministic) is put in the
    environment unless the user set one."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    if name == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device(name)


def provenance() -> dict[str, str]:
    """Git commit and package versions, recorded on every run."""
    out = {}
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    for pkg in ("lmcsweep", "torch", "torchvision", "mlflow", "optuna", "ffcv", "numpy"):
        try:
            out[f"version.{pkg}"] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class Datasets:
    """The data sets this process has read, each read once (and possibly in the background)."""

    def __init__(self) -> None:
        self._data: dict[tuple, tuple[threading.Thread, dict[str, Any]]] = {}

    def get(self, sweep: SweepConfig, name: str, background: bool = False) -> DataSet | None:
        """The data set of `sweep` (its `name`: an Optuna variant may not change it); with
        `background`, only start reading it, on a thread (reading files and decompressing leave the
        GIL free), so it is ready when the first job needs it (not when it may have to download)."""
        d = sweep.data
        synthetic = d.synthetic.model_dump() if d.synthetic else None
        key = (name, d.root, d.download, d.subset_train, d.subset_test, canonical(synthetic))
        if background and (d.download or key in self._data):
            return None
        if key not in self._data:
            box: dict[str, Any] = {}

            def read() -> None:
                try:
                    box["data"] = load_dataset(name, root=d.root, download=d.download, subset_train=d.subset_train,
                                               subset_test=d.subset_test, synthetic=synthetic)
                except BaseException as exc:  # noqa: BLE001 -- raised where the data is needed
                    box["error"] = exc
            thread = threading.Thread(target=read, name="lmcsweep-data", daemon=True)
            thread.start()
            self._data[key] = (thread, box)
        thread, box = self._data[key]
        if background:
            return None
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["data"]


@dataclass
class Context:
    sweep: SweepConfig
    hyper: Hyper
    store: Store
    tracker: Tracker
    device: torch.device
    data: DataSet
    progress: Callable[[int], None] = lambda n: None   # training iterations done
    report: Callable[..., None] = lambda *event: None  # ("start", job) / ("end", job, seconds, error): `Task`
    writer: Writer = field(default_factory=Writer)   # checkpoints and metrics, off the training path

    def model_definition(self) -> dict[str, Any]:
        """What builds the sweep's network: model name, options, input shape (C, H, W), classes."""
        options = {k: (int(v) if isinstance(v, float) and v.is_integer() and k in ("width", "depth") else v)
                   for k, v in self.hyper.model_options.items()}
        return {"name": self.hyper.model, "options": options, "input_shape": list(self.data.shape),
                "classes": self.data.num_classes}

    def model(self, init_seed: int) -> torch.nn.Module:
        d = self.model_definition()
        model = build_model(d["name"], d["classes"], tuple(d["input_shape"]), init_seed, **d["options"])
        model = model.to(self.device)
        if self.channels_last():
            model = model.to(memory_format=torch.channels_last)
        return model

    def channels_last(self) -> bool:
        """Image models on a GPU use the channels_last layout (CPU results are never touched)."""
        return self.device.type == "cuda" and len(self.data.shape) == 3 and self.data.shape[0] > 1

    def log_device_params(self, run_id: str) -> None:
        """The speed settings a training run actually used, as params beside train.precision/compile."""
        self.writer.submit(self.tracker.log_params, run_id, {
            "train.channels_last": self.channels_last(), "data.device": str(self.device)})

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """`torch.compile(model)` with train.compile on (same parameters, so optimizers and state
        dicts are untouched); the model itself otherwise."""
        return torch.compile(model) if self.hyper.compile else model

    def loader(self, split: str, order_seed: int, aug_seed: int):
        d = self.sweep.data
        return make_loader(self.data, split, self.hyper.batch_size, order_seed, aug_seed,
                           augmentation=self.hyper.augmentation, loader=d.loader, device=str(self.device),
                           ffcv_dir=str(self.store.root / "ffcv"))

    def eval_batches(self, split: str, limit: int | None = None):
        loader = self.loader(split, 0, 0)
        return lambda: loader.eval_batches(batch_size=1000, limit=limit)

    def test_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        return evaluate(model, self.eval_batches("test")())
