"""The numeric flags' types: each parses its text and checks its range, so that zero, a negative, NaN or a
typo's billion is one line naming the flag (argparse prefixes "argument --flag:") before any work starts.

The upper bounds are far above any real run and below what would exhaust a machine: a billion DataLoader
workers would fork until the kernel kills the shell; a billion-image batch, or a phantom of a billion
films, would allocate until it does. `findings` parses the one list flag, train's --classes.
"""
from __future__ import annotations

import argparse
import math

from roi_consistency.data import vocabulary
from roi_consistency.data.labels import LabelError, finding

MAX_BATCH = 1024  # images per batch: 4 GiB of float input at 1024 px, activations aside
MAX_WORKERS = 256
MAX_SIDE = 4096  # pixels; NIH films are 1024
MAX_COUNT = 10**9  # steps, epochs, images


def integer(lo: int, hi: int, what: str = ""):
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {lo} to {hi:,}{what}")
        return value
    return parse


def number(lo: float, hi: float, lo_open: bool = True, hi_open: bool = False, what: str = ""):
    """An argparse type: a finite number in (lo, hi]; lo_open and hi_open say which ends are left out."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if not ((value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)):
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number in {interval}{what}")
        return value
    return parse


BATCH = integer(1, MAX_BATCH)
WORKERS = integer(0, MAX_WORKERS, " (0: load in the main process)")
SIDE = integer(32, MAX_SIDE, " pixels")
COUNT = integer(0, MAX_COUNT)
POSITIVE = integer(1, MAX_COUNT)
SEED = integer(0, 2**32 - 1)
RATIO = number(0.0, 1.0)
RATE = number(0.0, 10.0, what=" (a learning rate)")
# the training settings that are numbers, by name (the train command's flags come from the config)
TRAIN = {"img_size": SIDE, "img_size_start": integer(0, MAX_SIDE, " pixels (0: off)"), "keep_ratio": RATIO,
         "epochs": integer(0, 100_000), "mask_epochs": integer(0, 100_000),
         "batch_size": integer(1, MAX_BATCH, "; for larger batches add --accum-steps"),
         "accum_steps": integer(1, MAX_BATCH), "lr": RATE, "mask_lr": RATE, "seed": SEED, "max_steps": POSITIVE,
         "save_every": COUNT, "workers": WORKERS}


def findings(text: str) -> list[str]:
    """An argparse type: finding names joined with commas, each once."""
    try:
        names = [finding(part) for part in text.split(",")]
    except LabelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    folded = [vocabulary.folded(n) for n in names]
    twice = next((n for n, f in zip(names, folded) if folded.count(f) > 1), None)
    if twice:
        raise argparse.ArgumentTypeError(f"{twice!r} is listed twice (case and separators aside)")
    return names
