"""Training settings: one config in five groups, and the presets as data.

The config is saved in every checkpoint as a plain dict of groups, {"data": {...}, "model": {...},
"method": {...}, "optim": {...}, "run": {...}}, so `torch.load(weights_only=True)` reads it, and
`infer`/`evaluate` never disagree with training about classes, image size, fill or keep ratio.

On `--resume` the model, method and optimisation groups come from the checkpoint; the run group and
the data paths come from the command line where it gives them (see `training.settings.resume_config`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from roi_consistency import flags
from roi_consistency.data.labels import LabelError, finding
from roi_consistency.errors import UserError

THRESHOLD_RULES = ("youden", "f1")  # how operating points are chosen (evaluation.metrics.choose_thresholds)
MODES = ("full", "standard", "random_mask", "no_consist", "no_drop", "no_sparse", "no_tv")
FILLS = {"mean": "ImageNet mean intensity (0 after normalisation)",
         "normal": "the mean image of the training set's normal (no finding) images, pixel by pixel"}


@dataclass
class DataConfig:
    train_csv: str = "nih_roi_train.csv"
    val_csv: str | None = "nih_roi_val.csv"
    image_root: str = "images"
    cache: str | None = None  # a folder made by `roi-consistency cache`
    # the findings to learn, in output order; None: those the training CSV names (data.labels.classes_in)
    classes: list[str] | None = None
    augment: bool = True
    skip_bad_images: bool = False  # leave out images the pre-flight check finds bad, instead of stopping


@dataclass
class ModelConfig:
    backbone: str = "convnext_base"
    pretrained: bool = True
    weights: str | None = None  # a local state dict, or a checkpoint of this tool, for the backbone
    drop_path: float = 0.1  # torchvision's ConvNeXt-Base default of 0.5 is too heavy for fine-tuning
    img_size: int = 224


@dataclass
class MethodConfig:
    # two_stage: the method (classifier with EVAL-X random masks, then the mask against it, frozen);
    # joint: the reference pipeline (`--preset seed`), every term from the first step.
    objective: str = "two_stage"
    mode: str = "full"  # an ablation or control (MODES); standard and random_mask train jointly
    keep_ratio: float = 0.1
    fill: str = "normal"  # what removed pixels show (FILLS)
    alpha: float = 1.0  # crop term
    beta: float = 2.0  # drop term
    gamma: float = 0.0  # mean of the soft mask
    delta: float = 1e-3  # total variation of the soft mask
    evalx_weight: float = 0.25  # classifier stage: share of each batch shown again under a random mask
    evalx_min_keep: float = 0.02  # ... whose kept share is log-uniform in [this, 0.6]
    min_keep_ratio: float = 0.02  # mask stage: each batch's keep ratio is log-uniform in [this, keep_ratio]
    # each epoch's per-class operating points on the validation set: youden (sensitivity + specificity - 1)
    # or f1; they travel in the checkpoint, and infer calls a finding positive at or above its threshold.
    # No flag: `roi-consistency calibrate --rule f1` re-chooses them for a trained checkpoint
    threshold_rule: str = "youden"

    @property
    def joint(self) -> bool:
        """Does this config train jointly (the reference, or one of its mask-free controls)?"""
        return self.objective == "joint" or self.mode in ("standard", "random_mask")

    @property
    def ablated(self) -> str | None:
        """The weight an ablation --mode sets to 0."""
        return {"no_consist": "alpha", "no_drop": "beta", "no_sparse": "gamma", "no_tv": "delta"}.get(self.mode)

    def loss_weights(self) -> dict[str, float]:
        """alpha/beta/gamma/delta after the --mode ablation switches its term off."""
        w = {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "delta": self.delta}
        if self.ablated:
            w[self.ablated] = 0.0
        if self.mode == "standard":
            w = dict.fromkeys(w, 0.0)
        if self.mode == "random_mask":  # the random mask is not learned: no mask regularisers
            w["gamma"] = w["delta"] = 0.0
        return w


@dataclass
class OptimConfig:
    batch_size: int = 8
    accum_steps: int = 2
    lr: float = 1e-4
    mask_lr: float | None = None  # the mask stage's lr (default: lr)
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    # progressive resizing: the classifier's epochs grow its input linearly from this size to img_size
    # (the mask stage, validation, infer and evaluate always use img_size); None: off
    img_size_start: int | None = None
    seed: int = 0


@dataclass
class RunConfig:
    epochs: int = 5  # classifier epochs (every epoch of joint training)
    mask_epochs: int = 3  # mask epochs against the frozen classifier (two_stage)
    max_steps: int | None = None  # stop, with a checkpoint, after this many optimizer steps in all
    save: str = "checkpoints/nih_roi_consistency.pt"
    save_every: int = 0
    resume: str | None = None
    device: str = "auto"
    bf16: bool | None = None  # None: on for CUDA
    compile: bool = False
    workers: int = 8
    log_every: int = 20
    tensorboard: str | None = None
    preset: str | None = None


GROUPS = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig, "optim": OptimConfig, "run": RunConfig}
# every field name is unique across groups, so flags and tests can name a setting without its group
GROUP_OF = {f.name: g for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **settings) -> "TrainConfig":
        """A copy with some settings changed, named without their group: replace(lr=1e-3, epochs=2)."""
        unknown = sorted(set(settings) - set(GROUP_OF))
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(unknown)}")
        by_group: dict[str, dict] = {}
        for k, v in settings.items():
            by_group.setdefault(GROUP_OF[k], {})[k] = v
        return dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **kv)
                                            for g, kv in by_group.items()})

    def stages(self) -> tuple[tuple[str, int], ...]:
        """The training stages in order, with their epoch counts."""
        if self.method.joint:
            return (("joint", self.run.epochs),)
        return (("classifier", self.run.epochs), ("mask", self.run.mask_epochs))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A saved config (checkpoint format roi-consistency/2): its groups, settings it predates at their
        defaults."""
        groups = {}
        for g, kind in GROUPS.items():
            given, defaults = d.get(g, {}), kind()
            if not isinstance(given, dict):
                raise UserError(f"its config group {g!r} is not a mapping")
            names = {f.name for f in dataclasses.fields(kind)}
            groups[g] = kind(**{k: checked(k, v, getattr(defaults, k)) for k, v in given.items() if k in names})
        return cls(**groups)


def checked(name: str, value, default):
    """A saved setting, refused unless it has its setting's type and, for a number a flag sets, the flag's
    range: a hand-edited config fails here, in one line, not halfway through a run (or at a 10^6-px resize)."""
    if name in flags.TRAIN and not (value is None and default is None):
        try:
            flags.TRAIN[name](str(value))
            ok = not isinstance(value, bool)
        except argparse.ArgumentTypeError:
            ok = False
    elif name == "classes":
        ok = isinstance(value, list) and value and len(set(value)) == len(value) and all(map(_finding, value))
    elif default is None:
        ok = value is None or isinstance(value, (str, int, float, bool))
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, type(default)) and (isinstance(default, bool) or not isinstance(value, bool))
    if not ok:
        raise UserError(f"its setting {name} = {str(value)[:60]!r} is malformed or out of range")
    return value


def _finding(name) -> bool:
    try:
        return isinstance(name, str) and finding(name) == name
    except LabelError:
        return False


def config(preset: str | None = None, **settings) -> TrainConfig:
    """The defaults, then a preset, then the settings given (named without their group)."""
    cfg = TrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"--preset {preset}: choose from {', '.join(PRESETS)}")
        cfg = cfg.replace(preset=preset, **PRESETS[preset])
    return cfg.replace(**settings)


# Presets set a group of defaults; flags given on the command line still win.
PRESETS: dict[str, dict] = {
    # The reference pipeline as first written: joint training of every term from the first step, the
    # tiny 3->16->32->1 mask net, relu(p_drop - p_full), the ImageNet-mean fill, ConvNeXt-Base at 224.
    "seed": dict(objective="joint", fill="mean", alpha=1.0, beta=0.5, gamma=1e-3, delta=1e-4,
                 backbone="convnext_base", img_size=224, batch_size=8, accum_steps=2, epochs=8, lr=1e-4),
    # The phantom demo on a 2-core CPU (./run_all.sh --demo): resnet18 from scratch at 160 px (small lesions
    # need it), batch 16; 7 classifier epochs growing from 128 px, then 1 mask epoch (EXPERIMENTS.md).
    "cpu-demo": dict(backbone="resnet18", pretrained=False, img_size=160, img_size_start=128, batch_size=16,
                     accum_steps=1, epochs=7, mask_epochs=1, lr=1e-3, mask_lr=3e-3, workers=2, log_every=10),
    # Real NIH training on GPUs: ConvNeXt-Base fine-tuned from ImageNet for 7 epochs, then 3 mask epochs
    # against it; the mask head learns from scratch, hence its 10x learning rate.
    "nih": dict(backbone="convnext_base", pretrained=True, img_size=224, batch_size=32, accum_steps=1,
                epochs=7, mask_epochs=3, lr=1e-4, mask_lr=1e-3, drop_path=0.1, workers=8),
}
