"""metrics.json, the one schema: what `evaluate` writes (summary.py builds it) and what the report, the
gallery and the model card read (outputs/). A figure per keep ratio is keyed by `ratio_key(r)`.

    {"n_images", "classes", "keep_ratio", "keep_ratios", "road_ratios", "checkpoint", "fill", "maps",
     "auroc", "mean_auroc", "faithfulness", "road", "kept_fraction", "localisation", "localisation_masks",
     "box_control", "localisation_by_size", "leakage", "leakage_boxed", "uncertainty", "curves", "calibration",
     "sanity", "confounders", "vocabulary", "datasets", "skipped_images", "gallery", "environment"}

Every figure is None where it is undefined (a class with one label value, no boxes given, ...).
"""
from __future__ import annotations

from typing import Optional, TypedDict

IOBB_T = ("0.1", "0.25", "0.5")  # the IoBB thresholds reported (Wang et al. 2017), as their keys
SIZES = ("small", "medium", "large")  # the terciles of box area
CONFOUNDER_SETS = ("all", "relied", "ignored")  # the pairs the confounder audit reports on
CONFOUNDER_MEASURES = ("pointing", "pointing_tolerant", "share", "energy", "placebo_share")  # ... per map
DEFAULT_MAPS = ("learned", "gradcam", "random")  # evaluate's explainers, for metrics that do not list theirs

Interval = Optional[list]  # [low, high] of a 95 % bootstrap interval, or None
PerClass = dict  # {finding: float or None}
PerRatio = dict  # {ratio_key(r): float or None}


def ratio_key(r: float) -> str:
    """The key of keep ratio r in metrics.json: "0.1" for 0.1 (Python's shortest repr of the float)."""
    return str(float(r))


def upgraded(metrics: dict) -> dict:
    """A metrics.json of an earlier version read as this schema names it: localisation was spelt
    localization (before 781dd0e), and sanity held the frozen-head check alone."""
    old = {"localization": "localisation", "localization_by_size": "localisation_by_size"}
    m = {old.get(k, k): v for k, v in metrics.items()}
    if (m.get("sanity") or {}).get("stages"):
        m["sanity"] = {"frozen_head": m["sanity"], "retrained_head": None}
    return m


def maps_of(metrics: dict) -> tuple[str, ...]:
    """The explainers a metrics.json scores, the learned map first."""
    return tuple(metrics.get("maps") or DEFAULT_MAPS)


def judged_at(sanity: dict) -> int:
    """The step of the randomisation check its verdict is read at (one without `judged_at` judged the last)."""
    return sanity.get("judged_at") or len(sanity["stages"])


class Removal(TypedDict):
    comprehensiveness: PerRatio  # mean p_full - p_drop over the true findings' pairs
    sufficiency: PerRatio  # mean p_full - p_crop over the same pairs


class Road(TypedDict):
    morf: PerRatio  # comprehensiveness with ROAD's imputation: the map's top r removed
    lerf: PerRatio  # sufficiency with ROAD's imputation: only the map's top r kept


class Auroc(TypedDict):
    full: PerClass
    crop: dict  # {map: PerClass}, the crop of each image's most probable class's mask
    drop: dict  # {map: PerClass}


class Localisation(TypedDict, total=False):
    n_boxes: int
    # and per map: {"pointing_game": float, "pointing_by_class": PerClass, "iobb_acc": {IOBB_T: float}}


class BoxControl(TypedDict):
    n: int
    p_full: float
    p_drop_box: float  # the finding's p with its true box removed
    p_crop_box: float  # ... with only its true box kept
    box_area: float


class Leakage(TypedDict):
    per_class: PerClass  # cross-validated AUROC of the labels predicted from the mask alone
    mean_auroc: Optional[float]


class MeanCI(TypedDict):
    mean: Optional[float]
    ci95: Interval


class Paired(TypedDict):
    difference: Optional[float]  # learned - Grad-CAM over the same units
    ci95: Interval
    p: Optional[float]  # two-sided bootstrap p-value of no difference


class Uncertainty(TypedDict, total=False):
    n_resamples: int
    seed: int
    level: float
    mean_auroc_full: Interval
    maps: dict  # {map: {"comprehensiveness" | "sufficiency" | "road_morf" | "road_lerf" | "pointing_game"
    #            | "iobb_0.1": MeanCI}} at the model's keep ratio
    learned_vs_gradcam: dict  # {"comprehensiveness" | "road_morf" | "pointing_game": Paired}


class Curve(TypedDict):
    curve: Optional[list]  # the mean p at each of Curves.ratios
    auc: Optional[float]
    auc_ci95: Interval


class Curves(TypedDict, total=False):
    ratios: list  # 0, then curves.RATIOS
    n_images: int
    n_pairs: int
    curve_images: Optional[int]  # the cap (--curve-images), None: all
    images_with_pairs: int
    fill: dict  # {map: {"deletion": Curve, "insertion": Curve}}
    road: dict  # the same with ROAD's imputation


class Calibration(TypedDict, total=False):
    bins: int
    mean_ece: Optional[float]  # the mean of per_class's ECE over the findings with positives in the test set
    mean_ece_over: list  # ... those findings
    reliability: dict  # {"count", "confidence", "frequency", "ece"} over every labelled (image, finding) pair
    per_class: dict  # {finding: {"ece", "ece_ci95", "n_pos", "n_unknown", and at a threshold "threshold",
    #                   "sensitivity", "sensitivity_ci95", "specificity", "specificity_ci95", "n_neg"}}
    thresholds: Optional[dict]  # {"rule", "csv", "n_images"} of the checkpoint's operating points
    warning: str


class FrozenHead(TypedDict):
    stages: list  # the classifier's stages randomised, top-down, cumulatively
    judged_at: int  # the verdict is read once this many are random
    n_pairs: int
    pass_below: float
    maps: dict  # {map: {"median", "median_ci95", "median_abs", "quartiles", "constant_share": per step,
    #              "pass": bool}}
    randomised: str


class RetrainedHead(TypedDict):
    stages: list  # the top stages randomised, cumulatively, to the judged depth
    judged_at: int
    n_pairs: int
    pass_below: float
    ceiling: dict  # the rho statistics of a second mask stage on the intact classifier, another seed
    learned: dict  # per step: "median", "median_ci95", "median_abs", "quartiles", "constant_share"
    retrained: str
    cost_s: float
    mask_epochs: int


class Sanity(TypedDict):
    frozen_head: Optional[FrozenHead]  # evaluate --sanity (randomisation.py)
    retrained_head: Optional[RetrainedHead]  # the sanity command (sanity.py)


class ConfounderSet(TypedDict):
    n_pairs: int
    reliance: dict  # {"fill" | "road": MeanCI and "share_above": the share of pairs whose p drops > relies_above;
    #                  "log_odds": the fill's drop in log-odds, MeanCI (share_above None)}
    maps: dict  # {map: {"pointing" | "pointing_tolerant" | "share" | "energy" | "placebo_share": MeanCI}}


class Confounders(TypedDict):
    file: str
    n_pairs: int
    n_images: int
    left_out_images: list  # listed images the test CSV does not have
    relies_above: float  # a pair whose p (fill) drops by more than this: the model relies on the region
    ignores_below: float  # ... by less than this: it ignores it
    tolerance: float  # the tolerant pointing's distance, as a share of the image side
    maps: list
    sets: dict  # {"all" | "relied" | "ignored": ConfounderSet}


class GallerySection(TypedDict):
    page: str
    n_cards: int
    n_images: int
    folder_bytes: int


class Metrics(TypedDict):
    n_images: int
    classes: list
    keep_ratio: float
    keep_ratios: list
    road_ratios: list
    checkpoint: str
    fill: str
    maps: list  # the explainers, the learned map first
    auroc: Auroc
    mean_auroc: dict  # {"full": float, "crop": {map: float}, "drop": {map: float}}
    faithfulness: dict  # {map: Removal}
    road: dict  # {map: Road}
    kept_fraction: dict  # {map: float}
    localisation: Optional[Localisation]
    localisation_masks: Optional[dict]  # evaluate --masks: {"n_masks", map: {"pointing", "share", "iou",
    #                                     "pointing_by_class"}}, the share and IoU of the map's top-r region
    box_control: Optional[dict]  # {finding: BoxControl}
    localisation_by_size: Optional[dict]  # {"cut_points", "n": {SIZES: int}, map: {SIZES: {"pointing_game",
    #                                       "iobb_acc_0.1"}}}
    leakage: dict  # {map: Leakage}
    leakage_boxed: Optional[dict]  # {"n_images", map: Leakage, "boxes": Leakage}
    uncertainty: Uncertainty
    curves: Optional[Curves]
    calibration: Calibration
    sanity: Optional[Sanity]
    confounders: Optional[Confounders]  # evaluate --confounders (confounders.py)
    vocabulary: Optional[dict]  # how the CSV's finding names were read as the model's, where they differ:
    #                             {"read_as": {class: [CSV names]}, "unlabelled": [classes], "unscored": [names],
    #                              "joined": {CSV name: [classes]}: an extra column, the classes' highest p}
    datasets: dict  # {"trained", "evaluated": {"csv", "name"}}: the training and the test CSV, and the dataset
    #                 each holds by make-csv's naming (nih, vindr, ...; None for a CSV named otherwise)
    skipped_images: list
    gallery: Optional[GallerySection]
    environment: dict  # {"trained": runtime.environment or None, "evaluated": runtime.environment}
