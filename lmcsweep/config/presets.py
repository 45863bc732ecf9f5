"""Presets: Table 1 of the paper (facts from the paper; choices it leaves open follow OpenLTH).

A sweep names one (`preset:`); its `train` section overrides single settings. `lmcsweep presets`
prints them with their networks' counted parameters (`records.presets`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..steps import Step


@dataclass(frozen=True)
class Preset:
    """One row of Table 1, with the choices the paper leaves open made explicit."""

    name: str
    model: str
    dataset: str
    optimizer: str
    lr: float
    batch_size: int
    iterations: Step
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | step | linear
    milestones: tuple[Step, ...] = ()
    gamma: float = 0.1
    final_lr: float = 0.0
    warmup: Step = Step(0)
    augmentation: str = "none"
    imp_style: str = "iterative"
    imp_density: float = 0.035  # the paper's IMP target density for this network
    imp_exempt: tuple[str, ...] = ()
    paper_accuracy: str = ""
    paper_params: str = ""


def _cifar(name: str, model: str, lr: float, warmup: int, density: float, exempt: tuple[str, ...],
           acc: str, params: str) -> Preset:
    return Preset(
        name=name, model=model, dataset="cifar10", optimizer="sgd", lr=lr, batch_size=128,
        iterations=Step(63000), momentum=0.9, weight_decay=1e-4, schedule="step",
        milestones=(Step(32000), Step(48000)), warmup=Step(warmup), augmentation="crop_flip",
        imp_density=density, imp_exempt=exempt, paper_accuracy=acc, paper_params=params,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(name="lenet", model="lenet", dataset="mnist", optimizer="adam", lr=1.2e-3, batch_size=60,
               iterations=Step(24000), imp_density=0.8**15, paper_accuracy="98.3 ± 0.1", paper_params="266K"),
        _cifar("resnet20", "resnet20", 0.1, 0, 0.8**8, (), "91.7 ± 0.1", "274K"),
        _cifar("resnet20_low", "resnet20", 0.01, 0, 0.8**11, (), "88.8 ± 0.1", "274K"),
        _cifar("resnet20_warmup", "resnet20", 0.03, 30000, 0.8**11, (), "89.7 ± 0.3", "274K"),
        _cifar("vgg16", "vgg16", 0.1, 0, 0.015, ("output",), "93.7 ± 0.1", "14.7M"),
        _cifar("vgg16_low", "vgg16", 0.01, 0, 0.8**13, ("output",), "91.7 ± 0.1", "14.7M"),
        _cifar("vgg16_warmup", "vgg16", 0.1, 30000, 0.015, ("output",), "93.4 ± 0.1", "14.7M"),
        Preset(name="resnet50", model="resnet50", dataset="imagenet", optimizer="sgd", lr=0.4, batch_size=1024,
               iterations=Step(90, "ep"), momentum=0.9, weight_decay=1e-4, schedule="step",
               milestones=(Step(30, "ep"), Step(60, "ep"), Step(80, "ep")), warmup=Step(5, "ep"),
               augmentation="rrc_flip", imp_style="one_shot", imp_density=0.3,
               paper_accuracy="76.1 ± 0.1", paper_params="25.5M"),
        Preset(name="inception_v3", model="inception_v3", dataset="imagenet", optimizer="sgd", lr=0.03,
               batch_size=1024, iterations=Step(171, "ep"), momentum=0.9, weight_decay=1e-4,
               schedule="linear", final_lr=0.005, augmentation="rrc_flip", imp_style="one_shot",
               imp_density=0.3, paper_accuracy="78.1 ± 0.1", paper_params="27.1M"),
    ]
}
