"""Training settings as one dataclass, the named presets, and plain-dict round trips.

The config is saved inside every checkpoint as a plain dict (so `torch.load(weights_only=True)`
works) and read back by `infer`/`evaluate`, which therefore never disagree with training about
classes, image size or normalisation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from roi_consistency.labels import FINDINGS

MODES = ("full", "standard", "random_mask", "no_consist", "no_drop", "no_sparse", "no_tv")


@dataclass
class TrainConfig:
    # data
    train_csv: str = "nih_roi_train.csv"
    val_csv: str | None = "nih_roi_val.csv"
    image_root: str = "images"
    cache: str | None = None  # a folder made by `roi-consistency cache`
    img_size: int = 224
    # progressive resizing: the epochs that train the classifier grow its input linearly from this size
    # to img_size (the mask stage, validation, infer and evaluate always use img_size); None: off
    img_size_start: int | None = None
    classes: list[str] = field(default_factory=lambda: list(FINDINGS))
    augment: bool = True
    # model
    backbone: str = "convnext_base"
    pretrained: bool = True
    weights: str | None = None
    drop_path: float = 0.1
    mask_net: str = "features_grad"  # tiny (the reference) | dilated | features | features_fine | features_grad
    # shared: one head for every class | per_class: one map per class (features nets) | auto: per_class for
    # the features nets, else shared (mask_head_of)
    mask_head: str = "auto"
    mask_norm: str = "standardize"  # none (the reference) | standardize logits per image before the sigmoid
    keep_ratio: float = 0.1
    fill: str = "normal"  # what removed pixels show: mean (ImageNet mean, the reference) | normal (mean normal image)
    passes: str = "auto"  # fused | separate | auto (separate for BatchNorm backbones while training)
    # losses (the defaults are the two_stage method of EXPERIMENTS.md; `--preset seed` is the reference)
    mode: str = "full"
    alpha: float = 1.0
    beta: float = 2.0
    gamma: float = 0.0
    delta: float = 1e-3
    # joint: every term from the first step (the reference). two_stage: epochs before mask_start_epoch
    # train the classifier alone, on full images and on images under random masks of random size
    # (label kept, as in EVAL-X), so it learns what a masked image means; later epochs freeze it and
    # train only the mask network against it.
    objective: str = "two_stage"
    mask_start_epoch: int | None = None  # None: about 5/8 of the epochs (see mask_start)
    evalx_weight: float = 0.25
    mask_loss: str = "bce"  # two_stage mask terms in probability (prob), cross-entropy (bce) or odds-ratio (odds) space
    min_keep_ratio: float | None = 0.02  # mask stage: keep ratio drawn per batch from [this, keep_ratio]
    mask_lr: float | None = None  # mask network's lr in the second stage (default: lr)
    # optimisation
    epochs: int = 8
    batch_size: int = 8
    accum_steps: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    seed: int = 0
    max_steps: int | None = None
    # runtime
    device: str = "auto"
    bf16: bool | None = None  # None: on for CUDA, off for CPU
    channels_last: bool | None = None  # None: on (CUDA and CPU)
    device_transforms: bool | None = None  # None: on for CUDA when reading a --cache
    compile: bool = False  # torch.compile the training forward (see BENCHMARKS.md before turning it on)
    workers: int = 8
    save: str = "checkpoints/nih_roi_consistency.pt"
    save_every: int = 0
    log_csv: str | None = None  # default: beside --save, as <name>.log.csv
    log_every: int = 20
    tensorboard: str | None = None
    resume: str | None = None
    preset: str | None = None

    def __post_init__(self):
        if self.mode in ("standard", "random_mask"):  # controls without a learned mask: no mask stage
            self.objective = "joint"
        if not self.min_keep_ratio:  # 0 on the command line: one fixed keep ratio
            self.min_keep_ratio = None

    def mask_start(self) -> int:
        """two_stage: the first mask-stage epoch (0-based)."""
        if self.mask_start_epoch is not None:
            return self.mask_start_epoch
        return max(1, min(self.epochs - 1, round(self.epochs * 5 / 8)))

    def loss_weights(self) -> dict[str, float]:
        """alpha/beta/gamma/delta after the --mode ablation switches its term off."""
        w = {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "delta": self.delta}
        off = {"no_consist": "alpha", "no_drop": "beta", "no_sparse": "gamma", "no_tv": "delta"}
        if self.mode in off:
            w[off[self.mode]] = 0.0
        if self.mode == "standard":
            w = dict.fromkeys(w, 0.0)
        if self.mode == "random_mask":  # the random mask is not learned: no mask regularisers
            w["gamma"] = w["delta"] = 0.0
        return w

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A saved config. Settings a checkpoint predates take the values it was trained with (the
        reference's), not today's defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**LEGACY, **{k: v for k, v in d.items() if k in names}})


def mask_head_of(cfg: dict) -> str:
    """The mask head a config dict means: "auto" resolved by its mask net."""
    head = cfg.get("mask_head", "shared")
    if head == "auto":
        return "per_class" if cfg["mask_net"].startswith("features") else "shared"
    return head


# What a config saved before these settings existed meant (read by from_dict).
LEGACY = {"fill": "mean", "mask_loss": "prob", "min_keep_ratio": None, "mask_head": "shared"}


# Presets set a group of defaults; flags given on the command line still win.
PRESETS: dict[str, dict] = {
    # The reference pipeline exactly as first written (issue text): tiny 3-layer mask net,
    # relu(p_drop - p_full), alpha..delta = 1, 0.5, 1e-3, 1e-4, ConvNeXt-Base at 224.
    "seed": dict(backbone="convnext_base", mask_net="tiny", mask_norm="none", fill="mean", objective="joint",
                 alpha=1.0, beta=0.5, gamma=1e-3, delta=1e-4, img_size=224, batch_size=8, accum_steps=2, epochs=8,
                 lr=1e-4),
    # The phantom demo on a 2-core CPU (./run_all.sh --demo): the method's defaults on resnet18 from scratch
    # at 160 px (small lesions need it), batch 16; 7 classifier epochs growing from 128 px (progressive
    # resizing buys the 7th epoch), then 1 mask epoch (EXPERIMENTS.md, cpu-demo).
    "cpu-demo": dict(backbone="resnet18", pretrained=False, img_size=160, img_size_start=128, batch_size=16,
                     accum_steps=1, epochs=8, mask_start_epoch=7, lr=1e-3, mask_lr=3e-3, workers=2, log_every=10),
    # Real NIH training on GPUs: ConvNeXt-Base fine-tuned from ImageNet for 7 epochs, then 3 mask
    # epochs against it; the mask head learns from scratch, hence its 10x learning rate.
    "nih": dict(backbone="convnext_base", pretrained=True, img_size=224, batch_size=32, accum_steps=1,
                epochs=10, mask_start_epoch=7, lr=1e-4, mask_lr=1e-3, drop_path=0.1, workers=8),
}


def apply_preset(cfg: TrainConfig, name: str | None) -> TrainConfig:
    if name is None:
        return cfg
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return dataclasses.replace(cfg, preset=name, **PRESETS[name])
