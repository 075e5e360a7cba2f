"""The `roi-consistency` command: parses arguments and calls one stage function per subcommand.

    roi-consistency --help
    roi-consistency phantom --out data/phantom
    roi-consistency unify --data-root data/phantom
    roi-consistency make-csv --data-root data/phantom --out-dir data/phantom
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from roi_consistency import __version__
from roi_consistency.config import MODES, PRESETS, TrainConfig, apply_preset
from roi_consistency.errors import UserError

HELP = argparse.ArgumentDefaultsHelpFormatter


def _download(a: argparse.Namespace) -> None:
    from roi_consistency.nih import download
    print(download(a.dest, copy=a.copy))  # last line of stdout: the dataset folder, for scripts


def _unify(a: argparse.Namespace) -> None:
    from roi_consistency.nih import unify
    s = unify(a.data_root, a.out, progress=not a.quiet)
    print(f"unify: {s.total} images; {s.created} links created, {s.repaired} repaired, "
          f"{s.unchanged} already in place")


def _make_csv(a: argparse.Namespace) -> None:
    from roi_consistency.nih import format_summary, make_csv
    summary = make_csv(a.data_root, a.image_root, a.out_dir, a.val_fraction, a.seed, a.skip_missing)
    print(f"wrote nih_roi_train.csv, nih_roi_val.csv, nih_roi_test.csv to {a.out_dir}")
    print(format_summary(summary))


def _phantom(a: argparse.Namespace) -> None:
    from roi_consistency.phantom import make_phantom
    s = make_phantom(a.out, n_images=a.n_images, size=a.size, seed=a.seed, workers=a.workers,
                     style=a.style, progress=not a.quiet)
    print(f"phantom: {s['n_images']} images of {a.size}px, {s['n_patients']} patients, "
          f"{s['n_train_val']} train+val / {s['n_test']} test, {s['n_boxes']} boxes -> {s['out']}")


# (field, flags, help); the default shown in --help is the TrainConfig field's default.
TRAIN_FLAGS = [
    ("train_csv", ["--train-csv", "--train_csv"], "training CSV (image,labels)"),
    ("val_csv", ["--val-csv", "--val_csv"], "validation CSV, evaluated after every epoch"),
    ("image_root", ["--image-root", "--image_root"], "folder holding the images named in the CSVs"),
    ("img_size", ["--img-size", "--img_size"], "side of the square model input in pixels"),
    ("img_size_start", ["--img-size-start"], "progressive resizing: the first epoch's input size, growing "
     "linearly to --img-size over the epochs that train the classifier (0, or --img-size or more: off)"),
    ("cache", ["--cache"], "read images from a cache built by `roi-consistency cache` instead of PNGs"),
    ("backbone", ["--backbone"], "any torchvision classification model name (resnet18 is fast on CPU)"),
    ("weights", ["--weights"], "local state dict to initialise the backbone (instead of downloading)"),
    ("drop_path", ["--drop-path", "--drop_path"], "stochastic depth for ConvNeXt/Swin/EfficientNet "
     "(torchvision's ConvNeXt-Base default of 0.5 is too heavy for fine-tuning)"),
    ("mask_net", ["--mask-net", "--mask_net"], "mask network: tiny (the reference 3->16->32->1 convs, 7x7 view), "
     "dilated (context of ~130 px), features (a head on the classifier's own feature maps, strides 8-32), "
     "features_fine (strides 4-32, for small lesions) or features_grad (features_fine that also reads the "
     "classifier's gradient x (input - fill) for the class it explains, so its maximum lands on small "
     "lesions; one map per (image, class))"),
    ("mask_head", ["--mask-head"], "shared: one head for every class; per_class: one map per class (features "
     "nets); auto: per_class for the features nets, else shared. A class-specific map is trained on every "
     "(image, true finding) pair in the two_stage mask stage and drawn for the most probable class in infer"),
    ("mask_norm", ["--mask-norm"], "standardize the mask logits per image before the sigmoid, so the soft mask "
     "cannot saturate and the straight-through gradient keeps flowing; none = the reference"),
    ("keep_ratio", ["--keep-ratio", "--keep_ratio"], "share of pixels the binary mask keeps (exactly)"),
    ("fill", ["--fill"], "what removed pixels show: mean (the ImageNet mean grey; the reference) or normal (the "
     "same pixel of the mean training image without findings, stored in the checkpoint)"),
    ("passes", ["--passes"], "backbone passes while training: fused = one call on [full; crop; drop], "
     "separate = three calls; auto = separate for BatchNorm backbones (batch statistics would mix)"),
    ("mode", ["--mode"], "full, or an ablation/control: standard (no mask), random_mask (these two train "
     "jointly: there is no mask stage), no_consist, no_drop, no_sparse, no_tv"),
    ("alpha", ["--alpha"], "weight of the crop term: |p_full - p_crop| (or its --mask-loss bce form)"),
    ("beta", ["--beta"], "weight of the drop term: relu(p_drop - p_full) in joint training; p_drop of the true "
     "findings (or -log(1 - p_drop)) in the two_stage mask stage"),
    ("gamma", ["--gamma"], "weight of mean(soft mask)"),
    ("delta", ["--delta"], "weight of the soft mask's total variation"),
    ("objective", ["--objective"], "joint: all terms from the start (the reference); two_stage: classifier first "
     "(full + random-mask images, label kept), then the mask network against the frozen classifier"),
    ("mask_start_epoch", ["--mask-start-epoch"], "two_stage: the epoch (0-based) where mask training starts "
     "(None: about 5/8 of --epochs)"),
    ("mask_loss", ["--mask-loss"], "two_stage: mask terms as |p_full - p_crop| and p_drop (prob) or as "
     "KL(p_full||p_crop) and -log(1 - p_drop) (bce: no vanishing gradient where the sigmoid saturates), "
     "or KL and log(1 + odds(p_drop)/odds(p_full)) (odds: removal scored relative to the full image, so "
     "faint findings pull as hard as obvious ones)"),
    ("min_keep_ratio", ["--min-keep-ratio"], "two_stage: each mask-stage batch draws its keep ratio between this "
     "and --keep-ratio (log-uniform), so the map's top pixels, not just its top share, hold the evidence; "
     "also the smallest random region of the classifier stage (log-uniform up to 60%%); "
     "0 = always --keep-ratio (and 5-60%% uniform)"),
    ("evalx_weight", ["--evalx-weight"], "two_stage: weight of the random-mask BCE in the classifier stage "
     "(that share of each batch is shown again under a random mask)"),
    ("mask_lr", ["--mask-lr"], "two_stage: learning rate of the mask network (default: --lr)"),
    ("epochs", ["--epochs"], "number of epochs"),
    ("batch_size", ["--batch-size", "--batch_size"], "images per micro-batch per process"),
    ("accum_steps", ["--accum-steps", "--accum_steps"], "micro-batches per optimizer step"),
    ("lr", ["--lr"], "AdamW peak learning rate (linear warm-up, then cosine decay)"),
    ("weight_decay", ["--weight-decay", "--weight_decay"], "AdamW weight decay"),
    ("warmup_frac", ["--warmup-frac"], "share of all optimizer steps spent warming up"),
    ("seed", ["--seed"], "seed for weights, data order and augmentation"),
    ("max_steps", ["--max-steps"], "stop (with a checkpoint) after this many optimizer steps"),
    ("device", ["--device"], "auto picks CUDA when available"),
    ("workers", ["--workers"], "DataLoader worker processes"),
    ("save", ["--save"], "checkpoint path; the best by val mean AUROC goes beside it as *.best.pt"),
    ("save_every", ["--save-every"], "also save every N optimizer steps (0: only after each epoch)"),
    ("log_csv", ["--log-csv"], "per-epoch metrics CSV (default: beside --save, *.log.csv)"),
    ("log_every", ["--log-every"], "optimizer steps between loss logs (host syncs)"),
    ("tensorboard", ["--tensorboard"], "write TensorBoard scalars to this folder (needs tensorboard)"),
]
CHOICES = {"mode": MODES, "passes": ("auto", "fused", "separate"), "device": ("auto", "cpu", "cuda"),
           "mask_net": ("tiny", "dilated", "features", "features_fine", "features_grad"),
           "objective": ("joint", "two_stage"),
           "mask_norm": ("standardize", "none"), "mask_head": ("auto", "shared", "per_class"),
           "mask_loss": ("prob", "bce", "odds"), "fill": ("mean", "normal")}


# flags whose default is None
OPTIONAL_TYPES = {"img_size_start": int, "max_steps": int, "mask_lr": float, "mask_start_epoch": int}


def _add_train_args(t: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    for name, flags, text in TRAIN_FLAGS:
        default = getattr(defaults, name)
        kind = type(default) if default is not None else OPTIONAL_TYPES.get(name, str)
        t.add_argument(*flags, dest=name, type=kind, default=argparse.SUPPRESS, choices=CHOICES.get(name),
                       help=f"{text} (default: {default})")
    t.add_argument("--preset", choices=list(PRESETS), default=argparse.SUPPRESS,
                   help="a named group of defaults; explicit flags still win. seed: the reference "
                        "pipeline; cpu-demo: a few minutes on CPU (phantom data); nih: real data on GPUs")
    t.add_argument("--pretrained", dest="pretrained", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS, help="load torchvision's ImageNet weights (default: on)")
    t.add_argument("--augment", dest="augment", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS, help="mild random-resized crop + rotation, no flip (default: on)")
    t.add_argument("--bf16", dest="bf16", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="bf16 autocast (default: on for CUDA, off for CPU)")
    t.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS, help="channels-last memory format (default: on)")
    t.add_argument("--device-transforms", dest="device_transforms", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS, help="with --cache: resize and augment whole batches on the device "
                   "instead of per image in the loader workers (default: on for CUDA)")
    t.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="torch.compile the training forward (default: off; see BENCHMARKS.md)")
    t.add_argument("--resume", nargs="?", const=True, default=argparse.SUPPRESS, metavar="PATH",
                   help="continue from --save (or PATH): same epoch, step, optimizer, schedule and RNG")


def train_config_from_args(a: argparse.Namespace) -> TrainConfig:
    given = {k: v for k, v in vars(a).items() if k not in ("func", "command")}
    cfg = apply_preset(TrainConfig(), given.pop("preset", None))
    cfg = dataclasses.replace(cfg, **given)
    if cfg.resume is True:
        cfg.resume = cfg.save
    if cfg.weights:
        cfg.pretrained = True  # --weights replaces the download, not the intent
    return cfg


def _train(a: argparse.Namespace) -> None:
    from roi_consistency.train import fit
    fit(train_config_from_args(a))


def _infer(a: argparse.Namespace) -> None:
    from roi_consistency.infer import format_table, infer_csv, infer_image
    if a.image:
        res = infer_image(a.checkpoint, a.image, a.keep_ratio, a.out, a.save_mask,
                          a.save_crop, a.vis_dir, a.device)
        print(format_table(res["predictions"][0]))
        return
    if a.save_mask or a.save_crop:
        raise UserError("--save-mask/--save-crop are for a single --image; use --vis-dir with --csv")
    a.out = a.out or "preds.json"
    res = infer_csv(a.checkpoint, a.csv, a.image_root, a.out, a.keep_ratio, a.vis_dir, a.vis_limit,
                    a.batch_size, a.device, a.workers, cache=a.cache)
    print(f"infer: {len(res['predictions'])} images -> {a.out}" + (f", overlays in {a.vis_dir}" if a.vis_dir else ""))


def _evaluate(a: argparse.Namespace) -> None:
    from roi_consistency.evaluate import evaluate_checkpoint
    try:
        ratios = [float(v) for v in a.keep_ratios.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--keep-ratios {a.keep_ratios}: expected numbers separated by commas") from None
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise UserError(f"--keep-ratios {a.keep_ratios}: each ratio must be between 0 and 1")
    m = evaluate_checkpoint(a.checkpoint, a.csv, a.image_root, a.bbox, a.out_dir, ratios, a.batch_size, a.device,
                            a.examples, a.seed, a.workers, cache=a.cache)
    r = str(m["keep_ratio"])
    f, loc = m["faithfulness"], m["localization"]

    def fmt(v, spec: str = ".4f") -> str:
        return "n/a" if v is None else format(v, spec)
    print(f"evaluate: {m['n_images']} images; mean AUROC full {fmt(m['mean_auroc']['full'])}")
    for k in ("learned", "gradcam", "random"):
        line = (f"  {k:8s} comprehensiveness@{r} {fmt(f[k]['comprehensiveness'][r], '+.4f')}  "
                f"sufficiency@{r} {fmt(f[k]['sufficiency'][r], '+.4f')}  kept {fmt(m['kept_fraction'][k])}")
        if loc:
            line += f"  pointing {fmt(loc[k]['pointing_game'], '.3f')}"
        print(line)
    control = m.get("box_control") or {}
    if loc and control:
        print("  per finding: pointing learned / gradcam; p_full -> p with the true box removed")
        for c, bc in control.items():
            pc = {k: loc[k]["pointing_by_class"].get(c) for k in ("learned", "gradcam")}
            print(f"    {c:20s} {fmt(pc['learned'], '.2f')} / {fmt(pc['gradcam'], '.2f')}   "
                  f"{bc['p_full']:.2f} -> {bc['p_drop_box']:.2f}  ({bc['n']} boxes)")
    leak = m.get("leakage") or {}
    if leak:
        print("  labels predicted from the mask alone (leakage, ~0.5 is good): "
              + ", ".join(f"{k} {v['mean_auroc']:.3f}" for k, v in leak.items() if v["mean_auroc"] is not None))
    boxed = m.get("leakage_boxed") or {}
    if boxed:
        print(f"  the same on the {boxed['n_images']} boxed images, against the true boxes as the reference: "
              + ", ".join(f"{k} {v['mean_auroc']:.3f}" for k, v in boxed.items()
                          if isinstance(v, dict) and v["mean_auroc"] is not None))
    print(f"metrics: {a.out_dir}/metrics.json\nreport:  {a.out_dir}/report.html")


def _cache(a: argparse.Namespace) -> None:
    from roi_consistency.cache import build_cache
    index = build_cache(a.csv, a.image_root, a.size, a.out, a.workers, progress=not a.quiet)
    print(f"cache: {len(index['names'])} images at {a.size}px -> {a.out}")


def _screenshot(a: argparse.Namespace) -> None:
    from roi_consistency.report import screenshot
    print(screenshot(a.html, a.out, a.width, a.height, a.section))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roi-consistency",
        description="Train a chest X-ray classifier on NIH ChestX-ray14 with a learned region-of-interest "
                    "mask, and measure whether the model relies on the region it highlights.",
        epilog="Run `roi-consistency COMMAND --help` for the flags of each command.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("download", formatter_class=HELP, help="fetch NIH ChestX-ray14 from Kaggle",
                       description="Download the Kaggle dataset nih-chest-xrays/data (~42 GB) with "
                                   "kagglehub. The cache folder follows $KAGGLEHUB_CACHE. Prints the "
                                   "dataset folder on the last line of stdout.")
    d.add_argument("--dest", help="also make the dataset available at this path (a symlink to the "
                                  "kagglehub cache, or a copy with --copy)")
    d.add_argument("--copy", action="store_true", help="with --dest: copy the files instead of linking")
    d.set_defaults(func=_download)

    u = sub.add_parser("unify", formatter_class=HELP, help="flatten images_*/images/*.png into one folder",
                       description="Symlink every DATA_ROOT/images_*/images/*.png into one flat folder. "
                                   "Safe to run again: existing links are kept, broken ones repaired.")
    u.add_argument("--data-root", "--data_root", required=True,
                   help="the NIH folder holding images_001/ … and Data_Entry_2017.csv")
    u.add_argument("--out", help="flat image folder to create (default: DATA_ROOT/images)")
    u.add_argument("--quiet", action="store_true", help="no progress bar")
    u.set_defaults(func=_unify)

    m = sub.add_parser("make-csv", formatter_class=HELP, help="write the train/val/test CSVs",
                       description="Build nih_roi_{train,val,test}.csv (columns image,labels) from "
                                   "Data_Entry_2017.csv and the official test_list.txt / "
                                   "train_val_list.txt. Validation patients are drawn from train_val "
                                   "by patient, so no patient is in two splits.")
    m.add_argument("--data-root", "--data_root", required=True,
                   help="folder with Data_Entry_2017.csv, train_val_list.txt and test_list.txt")
    m.add_argument("--image-root", "--image_root",
                   help="flat image folder used to check that every image exists (default: DATA_ROOT/images)")
    m.add_argument("--out-dir", "--out_dir", default=".", help="where to write the three CSVs")
    m.add_argument("--val-fraction", "--val_fraction", type=float, default=0.1,
                   help="share of train_val patients held out for validation")
    m.add_argument("--seed", type=int, default=0, help="seed of the patient-wise validation split")
    m.add_argument("--skip-missing", action="store_true",
                   help="leave out rows whose image is missing (with a warning) instead of failing")
    m.set_defaults(func=_make_csv)

    ph = sub.add_parser("phantom", formatter_class=HELP, help="generate the built-in phantom dataset",
                        description="Write a synthetic chest-film dataset in the exact Kaggle NIH layout "
                                    "(shards, Data_Entry_2017.csv, BBox_List_2017.csv, split lists), "
                                    "with a ground-truth box for every finding on a test image.")
    ph.add_argument("--out", required=True, help="folder to write (becomes a --data-root)")
    ph.add_argument("--n-images", "--n_images", type=int, default=2000, help="number of images")
    ph.add_argument("--size", type=int, default=256, help="image side in pixels (1024 = NIH size)")
    ph.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    ph.add_argument("--style", choices=("default", "alt"), default="default",
                    help="lesion appearance family; 'alt' is a second phantom with other lesion shapes")
    ph.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    ph.add_argument("--quiet", action="store_true", help="no progress bar")
    ph.set_defaults(func=_phantom)

    t = sub.add_parser("train", help="train the classifier and its ROI mask",
                       description="Train a torchvision backbone with the ROI-consistency losses on "
                                   "image,labels CSVs. Under torchrun it trains with DDP on every rank.",
                       epilog="example: roi-consistency train --preset cpu-demo --train-csv "
                              "runs/demo/csv/nih_roi_train.csv --val-csv runs/demo/csv/nih_roi_val.csv "
                              "--image-root runs/demo/phantom/images")
    _add_train_args(t)
    t.set_defaults(func=_train)

    i = sub.add_parser("infer", formatter_class=HELP, help="predict full/crop/drop probabilities, write preds.json",
                       description="Score images with a trained checkpoint: probabilities on the full image, "
                                   "the crop (mask kept) and the drop (mask removed), and faithfulness = "
                                   "p_full - p_drop per class. Classes, image size and normalisation come from "
                                   "the checkpoint.")
    i.add_argument("--checkpoint", required=True, help="a checkpoint written by `roi-consistency train`")
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV with an image column (and labels, if known)")
    src.add_argument("--image", help="one image file; prints a table")
    i.add_argument("--image-root", "--image_root", default=".", help="folder of the images named in --csv")
    i.add_argument("--keep-ratio", "--keep_ratio", type=float, default=None,
                   help="share of pixels the mask keeps (default: the checkpoint's)")
    i.add_argument("--out", "--save_json", default=None,
                   help="predictions JSON to write (default: preds.json with --csv; none with --image)")
    i.add_argument("--vis-dir", "--save_vis_dir", default=None,
                   help="write <image>_overlay.png, _crop.png and _drop.png here")
    i.add_argument("--cache", default=None, help="read images from a cache built by `roi-consistency cache`")
    i.add_argument("--vis-limit", type=int, default=16, help="how many images get overlays")
    i.add_argument("--batch-size", type=int, default=16, help="images per batch")
    i.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    i.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    i.add_argument("--save-mask", help="with --image: write the binary mask PNG here")
    i.add_argument("--save-crop", help="with --image: write the crop (what the model sees) here")
    i.set_defaults(func=_infer)

    e = sub.add_parser("evaluate", formatter_class=HELP, help="metrics.json and report.html against ground truth",
                       description="AUROC of full/crop/drop, comprehensiveness and sufficiency over keep ratios, "
                                   "and localisation against boxes (pointing game, IoBB) for the learned mask, "
                                   "Grad-CAM and a random mask of the same area, on the same model.")
    e.add_argument("--checkpoint", required=True, help="a checkpoint written by `roi-consistency train`")
    e.add_argument("--csv", required=True, help="test CSV (image,labels)")
    e.add_argument("--image-root", "--image_root", required=True, help="folder of the images")
    e.add_argument("--bbox", default=None, help="BBox_List_2017.csv for localisation (omit: localization null)")
    e.add_argument("--out-dir", default="eval", help="where metrics.json and report.html go")
    e.add_argument("--keep-ratios", default="0.01,0.05,0.1,0.2,0.5",
                   help="keep ratios for comprehensiveness/sufficiency (the checkpoint's is always added)")
    e.add_argument("--batch-size", type=int, default=16, help="images per batch")
    e.add_argument("--cache", default=None, help="read images from a cache built by `roi-consistency cache`")
    e.add_argument("--examples", type=int, default=8, help="example images in the report")
    e.add_argument("--seed", type=int, default=0, help="seed of the random-mask control")
    e.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    e.set_defaults(func=_evaluate)

    c = sub.add_parser("cache", formatter_class=HELP, help="decode images once into a memory-mapped array",
                       description="Decode every image named in the CSVs once (one channel, antialiased resize "
                                   "to --size) into a uint8 memory-mapped array that train/infer/evaluate read "
                                   "with --cache. Resumable; an unfinished cache is never used.")
    c.add_argument("--csv", action="append", required=True, help="a CSV with an image column (repeatable)")
    c.add_argument("--image-root", "--image_root", required=True, help="folder of the images")
    c.add_argument("--size", type=int, default=256, help="side of the stored images (>= the model's --img-size)")
    c.add_argument("--out", required=True, help="cache folder to create or finish")
    c.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cache)

    sc = sub.add_parser("screenshot", formatter_class=HELP, help="render report.html to a PNG (headless Chromium)",
                        description="Take a PNG screenshot of a report with headless Chromium (Debian package "
                                    "`chromium`), e.g. for a README or a slide.")
    sc.add_argument("html", help="the report.html to render")
    sc.add_argument("out", help="PNG file to write")
    sc.add_argument("--width", type=int, default=1280, help="viewport width in pixels")
    sc.add_argument("--height", type=int, default=3000, help="viewport height in pixels (the image's height)")
    sc.add_argument("--section", choices=("headline", "auroc", "faithfulness", "localisation", "leakage", "examples"),
                    help="start the view at this section of the report (default: the top)")
    sc.set_defaults(func=_screenshot)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"roi-consistency {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"roi-consistency {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
