"""The settings a training run runs with: checked before anything starts, and on --resume merged with
the checkpoint's (the model, method and optimisation groups from the checkpoint; the run and data groups
from the command line where it gives them).
"""
from __future__ import annotations

import argparse
import os
import sys

from roi_consistency.data.labels import classes_in
from roi_consistency.errors import UserError
from roi_consistency.flags import findings
from roi_consistency.model.config import GROUP_OF, PRESETS, THRESHOLD_RULES, TrainConfig
from roi_consistency.model.trained import checkpoint_config
from roi_consistency.training.classifier import MAX_KEEP


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_config(cli: TrainConfig, ckpt: dict, given: set[str], path: str) -> TrainConfig:
    """The resumed run's config: model, method and optimisation from the checkpoint; the run and data groups
    from the command line where it gives them, else the checkpoint's (the data may have moved; the epoch
    counts may grow). Given flags that this ignores are named in one warning."""
    saved = checkpoint_config(ckpt, path)
    if "classes" in given and cli.data.classes != saved.data.classes:
        raise UserError(f"--classes: the checkpoint {path} learns {', '.join(saved.data.classes)}; a resumed run "
                        "keeps its findings (leave --classes out)")
    from_cli = {k for k in given if GROUP_OF[k] in ("data", "run")}
    if "preset" in given:  # a preset given again sets its run settings (epoch counts, workers) as flags would
        from_cli |= {k for k in PRESETS[cli.run.preset] if GROUP_OF[k] in ("data", "run")}
    from_cli.discard("preset")  # the checkpoint keeps the name of the preset it was trained with
    keep = {k: getattr(getattr(cli, GROUP_OF[k]), k) for k in from_cli}
    keep.setdefault("save", cli.run.resume)  # without --save, a resumed run writes where it resumed from
    ignored = [f"{flag(k)} {getattr(getattr(cli, g), k)} (checkpoint: {getattr(getattr(saved, g), k)})"
               for k in sorted(given) for g in [GROUP_OF[k]]
               if g not in ("data", "run") and getattr(getattr(cli, g), k) != getattr(getattr(saved, g), k)]
    if "preset" in given and cli.run.preset != saved.run.preset:
        ignored.append(f"--preset {cli.run.preset}'s other settings (checkpoint: {saved.run.preset})")
    if ignored and int(os.environ.get("RANK", "0")) == 0:
        print("warning: --resume continues the checkpoint's model, method and optimisation settings; ignored: "
              + ", ".join(ignored), file=sys.stderr)
    # --max-steps and --resume say where this invocation stops and starts: never inherited
    return saved.replace(**{**keep, "max_steps": cli.run.max_steps, "resume": cli.run.resume})


def with_classes(cfg: TrainConfig) -> TrainConfig:
    """The config with its findings named: --classes, a resumed checkpoint's, or those the training CSV names;
    as a list of names each spelled as it is used, once."""
    if cfg.data.classes is None:
        return cfg.replace(classes=classes_in(cfg.data.train_csv))
    try:
        return cfg.replace(classes=findings(",".join(cfg.data.classes)))
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"--classes: {exc}") from None


def given_by_defaults(cfg: TrainConfig) -> set[str]:
    """For callers without a command line: the settings that differ from the defaults count as given."""
    default = TrainConfig()
    return {k for k, g in GROUP_OF.items() if getattr(getattr(cfg, g), k) != getattr(getattr(default, g), k)}


def check_config(cfg: TrainConfig, given: set[str]) -> None:
    """Refuse settings that would crash mid-run or silently do nothing, naming the flag."""
    m, o, r = cfg.method, cfg.optim, cfg.run
    if not 0 < m.keep_ratio < 1:
        raise UserError(f"--keep-ratio must be between 0 and 1, got {m.keep_ratio}")
    for name, value in (("accum_steps", o.accum_steps), ("batch_size", o.batch_size), ("log_every", r.log_every),
                        ("img_size", cfg.model.img_size)):
        if value < 1:
            raise UserError(f"{flag(name)} must be at least 1, got {value}")
    if o.img_size_start and o.img_size_start < 32:
        raise UserError(f"--img-size-start must be at least 32, got {o.img_size_start}; 0 turns progressive "
                        "resizing off")
    if m.ablated and getattr(m, m.ablated) == 0:
        raise UserError(f"--mode {m.mode} changes nothing: the {m.ablated} weight is already 0 here (the ablations "
                        "are the reference's, --preset seed)")
    if not (0 <= m.evalx_weight <= 1 and 0 < m.evalx_min_keep <= MAX_KEEP):
        raise UserError(f"the EVAL-X share ({m.evalx_weight}) must be in [0, 1] and its smallest kept share "
                        f"({m.evalx_min_keep}) in (0, {MAX_KEEP}]")
    if not 0 < m.min_keep_ratio <= m.keep_ratio:
        raise UserError(f"the mask stage's smallest keep ratio must be in (0, --keep-ratio={m.keep_ratio}], "
                        f"got {m.min_keep_ratio}")
    if m.threshold_rule not in THRESHOLD_RULES:
        raise UserError(f"threshold_rule {m.threshold_rule}: choose from {', '.join(THRESHOLD_RULES)}")
    if m.joint:
        _check_joint(cfg, given)
    else:
        _check_two_stage(cfg)


def _check_joint(cfg: TrainConfig, given: set[str]) -> None:
    if "mask_epochs" in given:
        raise UserError("--mask-epochs: joint training (--preset seed, or --mode standard/random_mask) has no mask "
                        "stage; every term trains from the first step for --epochs")
    if cfg.run.epochs < 1:
        raise UserError(f"--epochs must be at least 1 for joint training, got {cfg.run.epochs}")


def _check_two_stage(cfg: TrainConfig) -> None:
    e, me = cfg.run.epochs, cfg.run.mask_epochs
    if e < 0 or me < 0 or e + me == 0:
        raise UserError(f"--epochs ({e}) and --mask-epochs ({me}) must be 0 or more, and not both 0")
    if e == 0 and not cfg.model.weights:
        raise UserError("--epochs 0 trains only the mask, against a classifier that must come from --weights "
                        "(a checkpoint of this tool, or an exported folder)")
    if me and not any(cfg.method.loss_weights().values()):
        raise UserError("every mask term has weight 0 (--mode), so the mask stage would have nothing to learn")
