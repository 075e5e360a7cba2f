"""The `roi-consistency` command: parses arguments and calls one stage function per subcommand.

    roi-consistency --help
    roi-consistency phantom --out data/phantom
    roi-consistency unify --data-root data/phantom
    roi-consistency make-csv --data-root data/phantom --out-dir data/phantom
"""
from __future__ import annotations

import argparse
import inspect
import sys

from tqdm import tqdm

from roi_consistency import flags
from roi_consistency.errors import UserError
from roi_consistency.model.config import GROUP_OF, MODES, PRESETS, THRESHOLD_RULES, TrainConfig, config
from roi_consistency.outputs.screenshot import SECTIONS
from roi_consistency.version import __version__


class HELP(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default after its help, where it has one worth saying (not None, not said already)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.required or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it and where to look, not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the flags)\n")


TRAIN_EXAMPLE = ("example: roi-consistency train --preset cpu-demo --train-csv runs/demo/csv/nih_roi_train.csv "
                 "--val-csv runs/demo/csv/nih_roi_val.csv --image-root runs/demo/phantom/images")
CHECKPOINT_HELP = "a checkpoint written by `roi-consistency train`, or a folder written by `export`"
CALIBRATE_HELP = "a checkpoint written by `roi-consistency train`: the thresholds are written into it"


def _download(a: argparse.Namespace) -> None:
    """fetch a dataset (NIH ChestX-ray14 by default) from Kaggle

    Download the Kaggle dataset nih-chest-xrays/data (~42 GB) with kagglehub, or with --dataset another
    dataset's Kaggle copy (a competition's needs an account that accepted its rules); for a dataset behind a
    registration, say where to get it. The cache folder follows $KAGGLEHUB_CACHE. Prints the dataset folder
    on the last line of stdout.
    """
    if a.dataset == "nih":
        from roi_consistency.data.nih import download
        print(download(a.dest, copy=a.copy))  # last line of stdout: the dataset folder, for scripts
    else:
        from roi_consistency.data.sources import download
        print(download(a.dataset, a.dest, copy=a.copy))


def _unify(a: argparse.Namespace) -> None:
    """flatten images_*/images/*.png into one folder

    Symlink every DATA_ROOT/images_*/images/*.png into one flat folder. Safe to run again: existing links are
    kept, broken ones repaired.
    """
    from roi_consistency.data.nih import unify
    s = unify(a.data_root, a.out, progress=not a.quiet)
    print(f"unify: {s.total} images; {s.created} links created, {s.repaired} repaired, "
          f"{s.unchanged} already in place")


def _make_csv(a: argparse.Namespace) -> None:
    """write the train/val/test CSVs

    Build nih_roi_{train,val,test}.csv (columns image,labels) from Data_Entry_2017.csv and the official
    test_list.txt / train_val_list.txt. Validation patients are drawn from train_val by patient, so no patient
    is in two splits. With --dataset NAME, build NAME_{train,val,test}.csv (and NAME_boxes.csv) from that
    dataset's public copy: its official labelled test split where it has one, else one drawn by patient.
    """
    if a.dataset != "nih":
        return _make_dataset_csv(a)
    if a.uncertain or a.test_fraction is not None:
        raise UserError(f"--{'uncertain' if a.uncertain else 'test-fraction'} is for the other datasets; NIH has "
                        "certain labels and an official test split")
    from roi_consistency.data.nih import format_summary, make_csv
    summary = make_csv(a.data_root, a.image_root, a.out_dir, a.val_fraction, a.seed, a.skip_missing)
    print(f"wrote nih_roi_train.csv, nih_roi_val.csv, nih_roi_test.csv to {a.out_dir}")
    print(format_summary(summary))


def _make_dataset_csv(a: argparse.Namespace) -> None:
    from roi_consistency.data.sources import Options, format_summary, make_csv
    if a.uncertain and a.dataset != "chexpert":
        raise UserError(f"--uncertain is for --dataset chexpert; {a.dataset} has no uncertain labels")
    if a.image_root:
        raise UserError(f"--image-root is for NIH; {a.dataset}'s image paths are relative to --data-root")
    test = 0.2 if a.test_fraction is None else a.test_fraction
    summary = make_csv(a.dataset, a.data_root, a.out_dir, a.val_fraction, test, a.seed, a.skip_missing,
                       Options(uncertain=a.uncertain or "ignore"))
    print(f"wrote {a.dataset}_train.csv, {a.dataset}_val.csv, {a.dataset}_test.csv to {a.out_dir}; image paths are "
          f"relative to --data-root {a.data_root}: give it as --image-root to later commands")
    print(format_summary(a.dataset, summary))


def _phantom(a: argparse.Namespace) -> None:
    """generate the built-in phantom dataset

    Write a synthetic chest-film dataset in the exact Kaggle NIH layout (shards, Data_Entry_2017.csv,
    BBox_List_2017.csv, split lists), with a ground-truth box for every finding on a test image.
    """
    from roi_consistency.data.phantom import make_phantom
    if a.shortcut_control and not a.shortcut:
        raise UserError("--shortcut-control places the marker of --shortcut FINDING; give that too")
    s = make_phantom(a.out, n_images=a.n_images, size=a.size, seed=a.seed, workers=a.workers,
                     style=a.style, progress=not a.quiet, shortcut=a.shortcut, shortcut_control=a.shortcut_control,
                     image_format=a.format)
    print(f"phantom: {s['n_images']} images of {a.size}px, {s['n_patients']} patients, "
          f"{s['n_train_val']} train+val / {s['n_test']} test, {s['n_boxes']} boxes -> {s['out']}")
    if s["marked"]:
        m = s["marked"]
        print(f"shortcut: a marker for {m['finding']} on {m['marked_train_val']} train+val and {m['marked_test']} test "
              f"films; their boxes in confounders.csv, the test films without it in twins/")


# (setting, flag, help, hidden aliases: the reference pipeline's spellings). The default shown in --help
# is the setting's default without a preset.
TRAIN_FLAGS = [
    ("train_csv", "--train-csv", "training CSV (image,labels)", ["--train_csv"]),
    ("val_csv", "--val-csv", "validation CSV, scored after every epoch", ["--val_csv"]),
    ("image_root", "--image-root", "folder holding the images named in the CSVs", ["--image_root"]),
    ("classes", "--classes", "the findings to learn, comma-separated, in output order; unset: every finding the "
     "training CSV names (NIH's 14 in NIH's order when all are NIH's, else alphabetical)", []),
    ("cache", "--cache", "read images from a cache built by `roi-consistency cache` instead of PNGs", []),
    ("backbone", "--backbone", "any torchvision classification model (resnet18 is fast on CPU; the method's "
     "mask head reads ResNet and ConvNeXt stages)", []),
    ("weights", "--weights", "local state dict, a checkpoint of this tool or an exported folder, for the classifier "
     "(instead of downloading ImageNet weights)", []),
    ("img_size", "--img-size", "side of the square model input in pixels", ["--img_size"]),
    ("img_size_start", "--img-size-start", "progressive resizing: the first classifier epoch's input size, "
     "growing to --img-size by the last one (0: off)", []),
    ("mode", "--mode", "full, or an ablation of the reference (--preset seed): standard (no mask), random_mask "
     "(a random region; these two train jointly), no_consist, no_drop, no_sparse, no_tv", []),
    ("keep_ratio", "--keep-ratio", "share of pixels the binary mask keeps (exactly)", ["--keep_ratio"]),
    ("epochs", "--epochs", "stage 1: classifier epochs (joint training: every epoch); 0: train only the mask, "
     "against the classifier in --weights", []),
    ("mask_epochs", "--mask-epochs", "stage 2: epochs of the mask against the frozen classifier; 0: only the "
     "classifier", []),
    ("batch_size", "--batch-size", "images per micro-batch per process", ["--batch_size"]),
    ("accum_steps", "--accum-steps", "micro-batches per optimizer step", ["--accum_steps"]),
    ("lr", "--lr", "AdamW peak learning rate of the classifier (linear warm-up, then cosine decay)", []),
    ("mask_lr", "--mask-lr", "peak learning rate of the mask network (default: --lr)", []),
    ("seed", "--seed", "seed for weights, data order and augmentation", []),
    ("max_steps", "--max-steps", "stop, with a resumable checkpoint, after this many optimizer steps in all", []),
    ("save", "--save", "checkpoint path; the best epoch goes beside it as *.best.pt, the log as *.log.csv", []),
    ("save_every", "--save-every", "also save every N optimizer steps (0: after each epoch only)", []),
    ("device", "--device", "auto picks CUDA when available", []),
    ("workers", "--workers", "DataLoader worker processes", []),
    ("tensorboard", "--tensorboard", "also write TensorBoard scalars to this folder (needs tensorboard)", []),
]
CHOICES = {"mode": MODES, "device": ("auto", "cpu", "cuda")}
# settings whose default is None
OPTIONAL_TYPES = {"img_size_start": int, "max_steps": int, "mask_lr": float, "classes": flags.findings}
NOT_FLAGS = {"func", "command", "preset"}


def _add_train_args(t: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    for name, flag, text, aliases in TRAIN_FLAGS:
        default = getattr(getattr(defaults, GROUP_OF[name]), name)
        kind = type(default) if default is not None else OPTIONAL_TYPES.get(name, str)
        kind = flags.TRAIN.get(name, kind)
        t.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, choices=CHOICES.get(name),
                       help=text if default is None else f"{text} (default: {default})")
        for alias in aliases:
            t.add_argument(alias, dest=name, type=kind, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    t.add_argument("--preset", choices=list(PRESETS), default=argparse.SUPPRESS,
                   help="a named group of defaults; flags given still win. seed: the reference pipeline (joint "
                        "training, tiny mask net); cpu-demo: minutes on a CPU (phantom data); nih: NIH on GPUs")
    t.add_argument("--pretrained", dest="pretrained", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS, help="start from torchvision's ImageNet weights (default: on)")
    t.add_argument("--skip-bad-images", dest="skip_bad_images", action="store_true", default=argparse.SUPPRESS,
                   help="leave out, with a warning, images the pre-flight check finds missing or broken (default: "
                        "stop, naming them)")
    t.add_argument("--bf16", dest="bf16", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="bf16 autocast (default: on for CUDA, off for CPU)")
    t.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="torch.compile the training forward (default: off; see BENCHMARKS.md)")
    t.add_argument("--resume", nargs="?", const=True, default=argparse.SUPPRESS, metavar="PATH",
                   help="continue from --save (or PATH), in whichever stage it stopped: same position, optimizer, "
                        "schedule and RNG; the model, method and optimisation settings come from the checkpoint")


def train_config_from_args(a: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """The config the flags (and preset) ask for, and the names of the settings typed on the command line
    ("preset" among them when one was given)."""
    explicit = {k: v for k, v in vars(a).items() if k not in NOT_FLAGS}
    preset = getattr(a, "preset", None)
    if explicit.get("resume") is True:
        explicit["resume"] = explicit.get("save", config(preset).run.save)
    if explicit.get("img_size_start") == 0:
        explicit["img_size_start"] = None
    if explicit.get("weights"):
        explicit.setdefault("pretrained", True)  # --weights replaces the download, not the intent
    return config(preset, **explicit), set(explicit) | ({"preset"} if preset else set())


def _train(a: argparse.Namespace) -> None:
    """train the classifier, then its ROI mask

    Train in two stages on image,labels CSVs: the classifier on full and randomly masked images (--epochs), then
    the mask network against it, frozen (--mask-epochs). --preset seed trains the reference pipeline instead.
    Under torchrun it trains with DDP on every rank.
    """
    from roi_consistency.training.train import fit
    result = fit(*train_config_from_args(a))
    if result["signal"]:  # stopped by SIGINT or SIGTERM, with a resumable checkpoint: say so to the scheduler
        sys.exit(128 + result["signal"])


def _infer(a: argparse.Namespace) -> None:
    """predict full/crop/drop probabilities, write preds.json

    Score images with a trained checkpoint: probabilities on the full image, the crop (mask kept) and the drop
    (mask removed), and faithfulness = p_full - p_drop per class. Classes, image size, normalisation, keep ratio
    and fill come from the checkpoint.
    """
    from roi_consistency.infer import format_table, infer_csv, infer_image
    if a.image:
        res = infer_image(a.checkpoint, a.image, a.keep_ratio, a.out, a.save_mask, a.save_crop, a.vis_dir, a.device)
        print(format_table(res["predictions"][0]))
        return
    if a.save_mask or a.save_crop:
        raise UserError("--save-mask/--save-crop are for a single --image; use --vis-dir with --csv")
    a.out = a.out or "preds.json"
    res = infer_csv(a.checkpoint, a.csv, a.image_root, a.out, a.keep_ratio, a.vis_dir, a.vis_limit,
                    a.batch_size, a.device, a.workers, cache=a.cache, skip_bad=a.skip_bad_images)
    print(f"infer: {len(res['predictions'])} images -> {a.out}" + (f", overlays in {a.vis_dir}" if a.vis_dir else ""))


def _evaluate(a: argparse.Namespace) -> None:
    """metrics.json and report.html against ground truth

    AUROC of full/crop/drop, comprehensiveness and sufficiency over keep ratios, and localisation against boxes
    (pointing game, IoBB), for the learned map, Grad-CAM and a random map of the same area, on the same model.
    """
    from roi_consistency.evaluation.evaluate import evaluate_checkpoint, format_summary
    ratios, road = _ratios("--keep-ratios", a.keep_ratios), _ratios("--road-ratios", a.road_ratios)
    if a.gallery_limit is not None and a.gallery_limit < 0:
        raise UserError(f"--gallery-limit {a.gallery_limit}: give a number of images (0: no gallery)")
    if a.sanity_images < 1:
        raise UserError(f"--sanity-images {a.sanity_images}: the check needs at least one image")
    m = evaluate_checkpoint(a.checkpoint, a.csv, a.image_root, a.bbox, a.out_dir, keep_ratios=ratios, road_ratios=road,
                            curve_images=_curve_cap(a.curve_images), batch_size=a.batch_size, device=a.device,
                            n_examples=a.examples, seed=a.seed, workers=a.workers, cache=a.cache,
                            skip_bad_images=a.skip_bad_images, sanity=a.sanity, sanity_images=a.sanity_images,
                            gallery=a.gallery_limit != 0, gallery_limit=a.gallery_limit or None,
                            confounders=a.confounders, masks=a.masks,
                            maps=tuple(m.strip() for m in a.maps.split(",") if m.strip()))
    print(format_summary(m))
    print(f"metrics: {a.out_dir}/metrics.json\nreport:  {a.out_dir}/report.html")


def _calibrate(a: argparse.Namespace) -> None:
    """choose per-class operating points on a labelled CSV

    Choose, per finding, the probability at or above which `infer` calls it positive (preds.json's `positive`),
    on a labelled CSV, and store the thresholds in the checkpoint. `train` already does this on its validation
    set at every epoch; this is for a checkpoint without them, or another rule. Use the validation CSV, never
    the test CSV.
    """
    from roi_consistency.evaluation.calibrate import calibrate_checkpoint, format_thresholds
    record = calibrate_checkpoint(a.checkpoint, a.csv, a.image_root, a.rule, a.out, a.batch_size, a.device, a.workers,
                                  cache=a.cache, skip_bad=a.skip_bad_images)
    print(format_thresholds(record))
    print(f"written into {a.out or a.checkpoint}")


def _sanity(a: argparse.Namespace) -> None:
    """the randomisation check with the mask head retrained at each step

    Randomise the classifier's top stages, one more at each step, retrain the mask stage against it with
    the checkpoint's own settings, and compare its map with the original's on test pairs; a second mask
    stage on the intact classifier with another seed gives the noise ceiling. Writes OUT/sanity.json and,
    where it exists, OUT/metrics.json's sanity.retrained_head; run it before `evaluate` into the same
    --out-dir to see both cascades in the report. Each step costs one mask stage of training.
    """
    from roi_consistency.evaluation.sanity import format_result, retrained_head_check
    if a.steps < 1 or a.sanity_images < 1:
        raise UserError(f"--steps {a.steps} / --sanity-images {a.sanity_images}: give at least 1 of each")
    r = retrained_head_check(a.checkpoint, a.train_csv, a.val_csv, a.csv, a.image_root, a.out_dir, a.cache, a.steps,
                             a.sanity_images, a.seed, a.workers, a.device, progress=not a.quiet)
    print(format_result(r))
    print(f"sanity: {a.out_dir}/sanity.json")


def _export(a: argparse.Namespace) -> None:
    """write a shareable model folder (safetensors, no pickle)

    Write OUT/model.safetensors (the weights and the fill image), OUT/config.json (classes, image size,
    normalisation, keep ratio, fill, thresholds, the training config, the package version, the weights'
    checksum) and OUT/MODEL_CARD.md (the training data, the method, the evaluation, intended use and limits).
    roi_consistency.load(OUT), and the --checkpoint of infer, evaluate and export, read the folder back.
    """
    from roi_consistency.outputs.export import export_model
    folder = export_model(a.checkpoint, a.out, a.metrics)
    print(f"export: model.safetensors, config.json, MODEL_CARD.md -> {folder} (load with roi_consistency.load)")


def _curve_cap(text: str) -> int | None:
    """--curve-images: a number of images (0: no curves), or `all`."""
    if text == "all":
        return None
    if not text.isdigit():
        raise UserError(f"--curve-images {text}: give a number of images (0: no curves), or all")
    return int(text)


def _ratios(flag: str, text: str) -> list[float]:
    try:
        ratios = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text}: expected numbers separated by commas") from None
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise UserError(f"{flag} {text}: each ratio must be between 0 and 1")
    return ratios


def _cache(a: argparse.Namespace) -> None:
    """decode images once into a memory-mapped array

    Decode every image named in the CSVs once (one channel, antialiased resize to --size) into a uint8 memory-
    mapped array that train/infer/evaluate read with --cache. Resumable; an unfinished cache is never used.
    """
    from roi_consistency.data.cache import build_cache
    index = build_cache(a.csv, a.image_root, a.size, a.out, a.workers, progress=not a.quiet)
    print(f"cache: {len(index['names'])} images at {a.size}px -> {a.out}")


def _screenshot(a: argparse.Namespace) -> None:
    """render report.html to a PNG (headless Chromium)

    Take a PNG screenshot of a report with headless Chromium (Debian package `chromium`), e.g. for a README or a
    slide.
    """
    from roi_consistency.outputs.screenshot import screenshot
    print(screenshot(a.html, a.out, a.width, a.height, a.section))


def _command(sub, name: str, func, formatter_class=HELP, epilog: str | None = None) -> argparse.ArgumentParser:
    """A subcommand that runs func: its one-line help is the first line of func's docstring, its description
    the rest."""
    summary, _, rest = inspect.cleandoc(func.__doc__ or name).partition("\n\n")  # python -OO drops docstrings
    p = sub.add_parser(name, help=summary, description=" ".join(rest.split()), epilog=epilog,
                       **({"formatter_class": formatter_class} if formatter_class else {}))
    p.set_defaults(func=func)
    return p


def _add_data_commands(sub) -> None:
    from roi_consistency.data.sources import SOURCES
    d = _command(sub, "download", _download)
    d.add_argument("--dataset", choices=["nih", *SOURCES], default="nih", help="which dataset (docs/data.md)")
    d.add_argument("--dest", help="also make the dataset available at this path (a symlink to the "
                                  "kagglehub cache, or a copy with --copy)")
    d.add_argument("--copy", action="store_true", help="with --dest: copy the files instead of linking")

    u = _command(sub, "unify", _unify)
    u.add_argument("--data-root", "--data_root", required=True,
                   help="the NIH folder holding images_001/ … and Data_Entry_2017.csv")
    u.add_argument("--out", help="flat image folder to create (default: DATA_ROOT/images)")
    u.add_argument("--quiet", action="store_true", help="no progress bar")

    m = _command(sub, "make-csv", _make_csv)
    m.add_argument("--dataset", choices=["nih", *SOURCES], default="nih",
                   help="which dataset's public layout DATA_ROOT holds (docs/data.md has a section on each)")
    m.add_argument("--data-root", "--data_root", required=True,
                   help="the dataset's folder (NIH: with Data_Entry_2017.csv, train_val_list.txt and test_list.txt)")
    m.add_argument("--image-root", "--image_root",
                   help="NIH: flat image folder used to check that every image exists (default: DATA_ROOT/images)")
    m.add_argument("--out-dir", "--out_dir", default=".", help="where to write the CSVs")
    fraction = flags.number(0.0, 1.0, lo_open=False, hi_open=True)
    m.add_argument("--val-fraction", "--val_fraction", type=fraction, default=0.1,
                   help="share of the training patients held out for validation")
    m.add_argument("--test-fraction", type=fraction,
                   help="share of patients drawn for the test split where a dataset has no labelled official one "
                        "(default: 0.2)")
    m.add_argument("--uncertain", choices=("ignore", "zeros", "ones"),
                   help="CheXpert's uncertain (-1) labels: unknown, left out of loss and scores (ignore, the "
                        "default), negative (zeros) or positive (ones)")
    m.add_argument("--seed", type=flags.SEED, default=0, help="seed of the patient-wise splits")
    m.add_argument("--skip-missing", action="store_true",
                   help="leave out rows whose image is missing (with a warning) instead of failing")


def _add_phantom_and_cache(sub) -> None:
    ph = _command(sub, "phantom", _phantom)
    ph.add_argument("--out", required=True, help="folder to write (becomes a --data-root)")
    ph.add_argument("--n-images", "--n_images", type=flags.integer(1, 1_000_000), default=2000,
                    help="number of images")
    ph.add_argument("--size", type=flags.SIDE, default=256, help="image side in pixels (1024 = NIH size)")
    ph.add_argument("--seed", type=flags.SEED, default=0, help="random seed; same seed, same files")
    ph.add_argument("--style", choices=("default", "alt"), default="default",
                    help="lesion appearance family; 'alt' is a second phantom with other lesion shapes")
    ph.add_argument("--shortcut", metavar="FINDING", default=None,
                    help="add a marker that stands in for FINDING: on ~90%% of its films and ~5%% of the others "
                         "(test patients: also a third of the others), with confounders.csv and twins/")
    ph.add_argument("--shortcut-control", action="store_true",
                    help="with --shortcut: place the marker on ~30%% of all films, whatever their labels")
    ph.add_argument("--format", choices=("png", "dicom"), default="png",
                    help="write the films as 8-bit PNG (as NIH) or as DICOM (.dcm: 12-bit MONOCHROME1, windowed)")
    ph.add_argument("--workers", type=flags.integer(1, flags.MAX_WORKERS), default=None,
                    help="processes (default: all cores)")
    ph.add_argument("--quiet", action="store_true", help="no progress bar")

    c = _command(sub, "cache", _cache)
    c.add_argument("--csv", action="append", required=True, help="a CSV with an image column (repeatable)")
    c.add_argument("--image-root", "--image_root", required=True, help="folder of the images")
    c.add_argument("--size", type=flags.SIDE, default=256, help="side of the stored images (>= the model's --img-size)")
    c.add_argument("--out", required=True, help="cache folder to create or finish")
    c.add_argument("--workers", type=flags.integer(1, flags.MAX_WORKERS), default=None,
                   help="processes (default: all cores)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_scoring_common(p: argparse.ArgumentParser, checkpoint_help: str = CHECKPOINT_HELP) -> None:
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out (and list in the JSON) images the pre-flight check finds missing or broken")
    p.add_argument("--cache", default=None, help="read images from a cache built by `roi-consistency cache`")
    p.add_argument("--batch-size", type=flags.BATCH, default=16, help="images per batch")
    p.add_argument("--workers", type=flags.WORKERS, default=2, help="DataLoader worker processes")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")


def _add_infer(sub) -> None:
    i = _command(sub, "infer", _infer)
    _add_scoring_common(i)
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV with an image column (and labels, if known)")
    src.add_argument("--image", help="one image file; prints a table")
    i.add_argument("--image-root", "--image_root", default=".", help="folder of the images named in --csv")
    i.add_argument("--keep-ratio", "--keep_ratio", type=flags.RATIO, default=None,
                   help="share of pixels the mask keeps (default: the checkpoint's)")
    i.add_argument("--out", "--save_json", default=None,
                   help="predictions JSON to write (default: preds.json with --csv; none with --image)")
    i.add_argument("--vis-dir", "--save_vis_dir", default=None,
                   help="write <image>_overlay.png, _crop.png and _drop.png here")
    i.add_argument("--vis-limit", type=flags.COUNT, default=16, help="how many images get overlays")
    i.add_argument("--save-mask", help="with --image: write the binary mask PNG here")
    i.add_argument("--save-crop", help="with --image: write the crop (what the model sees) here")


def _add_evaluate(sub) -> None:
    e = _command(sub, "evaluate", _evaluate)
    _add_scoring_common(e)
    e.add_argument("--csv", required=True, help="test CSV (image,labels)")
    e.add_argument("--image-root", "--image_root", required=True, help="folder of the images")
    e.add_argument("--bbox", default=None, help="BBox_List_2017.csv for localisation (omit: localisation null)")
    e.add_argument("--out-dir", default="eval", help="where metrics.json and report.html go")
    e.add_argument("--keep-ratios", default="0.01,0.05,0.1,0.2,0.5",
                   help="keep ratios for comprehensiveness/sufficiency (the checkpoint's is always added)")
    e.add_argument("--road-ratios", default="0.05,0.1,0.2",
                   help="keep ratios also scored with ROAD's imputation (costly: a forward pass per map and ratio; "
                        "the checkpoint's is always added)")
    e.add_argument("--curve-images", default="200", metavar="N",
                   help="deletion/insertion curves (20 ratios, fill and ROAD) on N test images with a finding, drawn "
                        "with --seed; all: every one; 0: no curves (each finding costs ~80 forward passes per map)")
    e.add_argument("--sanity", action="store_true",
                   help="also run the randomisation check with the head frozen: re-initialise the classifier's stages "
                        "one by one, from the top down to the stem, and measure how much each map changes (a map "
                        "that does not change ignores the model; the verdict is read after the top three). The "
                        "check with the mask head retrained at each step is its own command, sanity")
    e.add_argument("--maps", default="learned,gradcam,random",
                   help="the maps to score, the learned one always first; also: attribution (the gradient x "
                        "(input - fill) the learned head reads), anomaly (|input - fill| smoothed, model-free), "
                        "gradcam16 (Grad-CAM at the stride-16 stage)")
    e.add_argument("--masks", default=None, metavar="DIR",
                   help="ground-truth masks, DIR/<finding>/<image stem>.png (SIIM's from make-csv): pointing, the "
                        "share of each map's top-r region inside the mask, and their IoU")
    e.add_argument("--confounders", default=None, metavar="FILE",
                   help="regions that should not be evidence (a marker, a tube, a text token), in BBox_List_2017.csv's "
                        "layout, one finding each: audit whether the model relies on them and whether each map says "
                        "so (docs/evaluation.md)")
    e.add_argument("--sanity-images", type=flags.integer(1, 100_000), default=64,
                   help="test images (one finding each) in the --sanity check")
    e.add_argument("--gallery-limit", type=flags.COUNT, default=None, metavar="N",
                   help="gallery.html shows the first N test images (default: all; 0: no gallery)")
    e.add_argument("--examples", type=flags.integer(0, 1000), default=8, help="example images in the report")
    e.add_argument("--seed", type=flags.SEED, default=0, help="seed of the random-map control")


def _add_calibrate(sub) -> None:
    c = _command(sub, "calibrate", _calibrate)
    _add_scoring_common(c, CALIBRATE_HELP)
    c.add_argument("--csv", required=True, help="labelled CSV to choose on: the validation CSV")
    c.add_argument("--image-root", "--image_root", required=True, help="folder of the images")
    c.add_argument("--rule", choices=THRESHOLD_RULES, default="youden",
                   help="youden: the ROC point of largest sensitivity + specificity - 1; f1: the point of best F1")
    c.add_argument("--out", default=None, help="write a calibrated copy here instead of updating --checkpoint")


def _add_sanity(sub) -> None:
    s = _command(sub, "sanity", _sanity)
    s.add_argument("--checkpoint", required=True, help="the checkpoint `train` wrote (its mask stage is retrained)")
    s.add_argument("--train-csv", "--train_csv", required=True, help="the training CSV the mask stage trains on")
    s.add_argument("--val-csv", "--val_csv", required=True, help="the validation CSV that picks its best epoch")
    s.add_argument("--csv", required=True, help="test CSV (image,labels): the pairs the maps are compared on")
    s.add_argument("--image-root", "--image_root", required=True, help="folder of the images of all three CSVs")
    s.add_argument("--cache", default=None, help="read images from a cache built by `roi-consistency cache`")
    s.add_argument("--out-dir", default="eval", help="where sanity.json (and the retrained runs) go")
    s.add_argument("--steps", type=flags.integer(1, 64), default=3,
                   help="stages randomised, top-down; the verdict is read at 3")
    s.add_argument("--sanity-images", type=flags.integer(1, 100_000), default=64,
                   help="test images (one finding each) compared")
    s.add_argument("--seed", type=flags.SEED, default=0, help="seed of the randomisation and of the images drawn")
    s.add_argument("--workers", type=flags.WORKERS, default=2, help="DataLoader worker processes of each retraining")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    s.add_argument("--quiet", action="store_true", help="no training output")


def _add_export(sub) -> None:
    x = _command(sub, "export", _export)
    x.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    x.add_argument("--out", required=True, help="folder to write")
    x.add_argument("--metrics", default=None, help="an evaluation's metrics.json, for the model card's figures")


def _add_screenshot(sub) -> None:
    sc = _command(sub, "screenshot", _screenshot)
    sc.add_argument("html", help="the report.html to render")
    sc.add_argument("out", help="PNG file to write")
    sc.add_argument("--width", type=flags.integer(1, 16384), default=1280, help="viewport width in pixels")
    sc.add_argument("--height", type=flags.integer(1, 16384), default=3000,
                    help="viewport height in pixels (the image's height)")
    sc.add_argument("--section", choices=SECTIONS,
                    help="start the view at this section of the report (default: the top)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="roi-consistency",
        description="Train a chest X-ray classifier on NIH ChestX-ray14 with a learned region-of-interest "
                    "mask, and measure whether the model relies on the region it highlights.",
        epilog="Run `roi-consistency COMMAND --help` for the flags of each command.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_data_commands(sub)
    _add_phantom_and_cache(sub)
    t = _command(sub, "train", _train, formatter_class=None, epilog=TRAIN_EXAMPLE)
    _add_train_args(t)
    _add_infer(sub)
    _add_evaluate(sub)
    _add_calibrate(sub)
    _add_sanity(sub)
    _add_export(sub)
    _add_screenshot(sub)
    return p


def user_message(exc: UserError) -> str:
    """The error's own message. One raised in a DataLoader worker arrives wrapped in the worker's traceback;
    its last line is the message."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split("UserError: ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        tqdm.write(f"roi-consistency {args.command}: error: {user_message(exc)}", file=sys.stderr)  # off any bar
        sys.exit(2)
    except KeyboardInterrupt:
        tqdm.write(f"roi-consistency {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
