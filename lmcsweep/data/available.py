"""Whether a data set is on this machine, before anything runs (`lmcsweep validate`): looked for
where `datasets.load_dataset` looks, nothing read."""

from __future__ import annotations

from .datasets import CIFAR_FOLDER, DATASETS, ENV_VAR, candidates, find_idx, idx_places

EMBEDDED = "fashion_mnist"  # the data set every install has (Debian's dataset-fashion-mnist)


def missing_dataset(name: str, root: str | None = None, download: bool = False) -> str | None:
    """Why data set `name` cannot be read on this machine, in one line with what to do (None when
    it is there, will be downloaded, or is generated). Looks where `load_dataset` looks, reads nothing."""
    if name == "synthetic" or name not in DATASETS or (download and root and name != "imagenet"):
        return None
    if name in ("mnist", "fashion_mnist"):
        places = idx_places(name, root)
        if any(find_idx(p) for p in places):
            return None
    elif name == "cifar10":
        places = candidates(name, root, [])
        if any((f / "data_batch_1").is_file() and (f / "test_batch").is_file()
               for p in places for f in (p / CIFAR_FOLDER, p)):
            return None
    else:
        places = candidates(name, root, [])
        if any((p / "train").is_dir() and (p / "val").is_dir() for p in places):
            return None
    where = f"looked in {', '.join(str(p) for p in places)}" if places else f"no data.root, ${ENV_VAR} unset"
    ways = [f"set data.root or ${ENV_VAR} to where it is"]
    if name != "imagenet":
        ways.append("data.download: true with data.root (needs internet)")
    if name == EMBEDDED:
        ways.append("apt-get install dataset-fashion-mnist")
    elif name == "mnist":  # the same shape: any MNIST network runs on it
        ways.append(f"or use the embedded data set: data.dataset: {EMBEDDED}")
    elif name == "cifar10":  # colour images: try the sweep offline on generated ones
        ways.append("or, to try the sweep offline, data.dataset: synthetic (generated, CIFAR-10's shape)")
    return f"data set {name!r} is not on this machine ({where}); {'; '.join(ways)}"
