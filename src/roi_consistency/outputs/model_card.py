"""MODEL_CARD.md of an exported model: what it was trained on, how, how well it did, and what it is not for."""
from __future__ import annotations

from pathlib import Path

from roi_consistency.data.labels import FINDINGS
from roi_consistency.errors import UserError
from roi_consistency.evaluation.schema import Metrics, judged_at, ratio_key
from roi_consistency.files.text import read_table
from roi_consistency.model.config import TrainConfig
from roi_consistency.runtime import environment_line

PHANTOM_MARK = "PHANTOM.json"  # written by `roi-consistency phantom` beside its images


def split_sizes(path: str | None) -> str:
    """'N images, P patients' of a CSV (NIH names start with the patient id), or why not."""
    if not path:
        return "none"
    try:
        names = [row["image"] for _, row in read_table(path, ("image",))[1]]
    except UserError:
        return f"`{path}` (not readable at export time: sizes unknown)"
    patients = {Path(n).name.split("_")[0] for n in names}
    return f"`{path}`: {len(names):,} images, {len(patients):,} patients"


def trained_on_phantom(cfg: TrainConfig) -> bool:
    root = Path(cfg.data.image_root)
    return any((d / PHANTOM_MARK).is_file() for d in (root, root.parent))


def _f(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _ci(ci) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def evaluation_section(m: Metrics, source: str) -> list[str]:
    """The headline figures of a metrics.json, with their definitions."""
    r, unc = ratio_key(m["keep_ratio"]), (m.get("uncertainty") or {}).get("maps") or {}
    lines = [f"From `{source}`: {m['n_images']:,} test images, keep ratio {r}. Brackets: 95 % bootstrap intervals "
             "over the test images.", "",
             f"Mean AUROC on the full image: {_f(m['mean_auroc']['full'])}"
             f"{_ci((m.get('uncertainty') or {}).get('mean_auroc_full'))}.", "",
             "| map | comprehensiveness | sufficiency | ROAD MoRF | pointing game |", "|---|---|---|---|---|"]
    loc = m.get("localisation") or {}
    for k in m["maps"]:
        u = unc.get(k) or {}
        values = [m["faithfulness"][k]["comprehensiveness"].get(r), m["faithfulness"][k]["sufficiency"].get(r),
                  ((m.get("road") or {}).get(k) or {}).get("morf", {}).get(r), (loc.get(k) or {}).get("pointing_game")]
        keys = ("comprehensiveness", "sufficiency", "road_morf", "pointing_game")
        cells = [f"{_f(v)}{_ci((u.get(key) or {}).get('ci95'))}" for v, key in zip(values, keys)]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Comprehensiveness: how much the true finding's probability falls when the map's top region is "
              "removed (filled with the model's fill); sufficiency: how much it falls when only that region is kept; "
              "ROAD MoRF: comprehensiveness with the removed pixels imputed from their neighbours instead; pointing "
              "game: the share of ground-truth boxes that hold the map's maximum. Definitions: docs/evaluation.md."]
    sanity, cal = m.get("sanity") or {}, m.get("calibration")
    if sanity.get("frozen_head"):
        san = sanity["frozen_head"]
        lines += ["", f"Randomisation check, the mask head frozen (the classifier's top {judged_at(san)} stages "
                  "re-initialised): " + ", ".join(f"{k} {'passes' if v['pass'] else 'fails'}"
                                                   for k, v in san["maps"].items()) + "."]
    if sanity.get("retrained_head"):
        r = sanity["retrained_head"]
        rho = r["learned"]["median"][r["judged_at"] - 1]
        lines += ["", f"Randomisation check, the mask head retrained at each step: the learned map "
                  f"{'passes' if r['pass'] else 'fails'} (median rho {rho:+.2f}, ceiling "
                  f"{r['ceiling']['median']:+.2f})."]
    if cal:
        lines += ["", f"Calibration: mean expected calibration error {_f(cal['mean_ece'])} over the findings with "
                  f"positives in the test set ({cal['bins']} bins)."]
    return lines


METHODS = {"two_stage": "two stages: the classifier on full and randomly masked images (EVAL-X), then the mask head "
                         "against it, frozen",
           "joint": "the reference design: classifier and mask trained jointly"}


def _thresholds(th: dict | None) -> str:
    return "none stored" if not th else f"{th['rule']}, chosen on {Path(th['csv']).name} ({th['n_images']} images)"


def model_card(config: dict, cfg: TrainConfig, metrics: Metrics | None, metrics_path: str | None) -> str:
    d, mo, me, o, r = cfg.data, cfg.model, cfg.method, cfg.optim, cfg.run
    phantom = trained_on_phantom(cfg)
    th = config.get("thresholds")
    lines = [f"# Model card: {Path(config['exported_from']).name}", "",
             f"Exported by roi-consistency {config['package_version']} from `{config['exported_from']}` (optimizer "
             f"step {config['step']}). Load it with `roi_consistency.load(folder)`.", "",
             "## What it is", "",
             f"A classifier of {len(d.classes)} chest X-ray findings ({', '.join(d.classes)}), with a learned map of "
             f"the region its prediction relies on: the top {me.keep_ratio:.0%} of the pixels.", "",
             "## Training data", "",
             f"- train: {split_sizes(d.train_csv)}", f"- validation: {split_sizes(d.val_csv)}",
             f"- images: `{d.image_root}`"]
    if phantom:
        lines.append("- **This model was trained on the built-in phantom**: synthetic films, not chest X-rays. Its "
                     "figures show the pipeline works; they say nothing about real films.")
    if set(d.classes) <= set(FINDINGS):
        lines.append("- NIH ChestX-ray14's labels were mined from the radiology reports by NLP (Wang et al. 2017); "
                     "some are wrong, and the test labels are no more certain than the training ones.")
    lines += ["", "## Method and key settings", "",
              f"- {METHODS['joint' if me.joint else 'two_stage']}",
              f"- backbone `{mo.backbone}` ({'ImageNet weights' if mo.pretrained else 'from scratch'}), "
              f"{mo.img_size} px, one channel; fill: {config['fill']}",
              f"- epochs: {r.epochs} classifier, {r.mask_epochs} mask; batch {o.batch_size} x {o.accum_steps}; lr "
              f"{o.lr:g} (mask {o.mask_lr or o.lr:g}); seed {o.seed}",
              f"- operating points: {_thresholds(th)}",
              f"- trained on: {environment_line(config.get('trained_on'))}; the same command and seed train other "
              "weights on another kind of CPU, so compare runs trained on the same kind",
              "", "## Evaluation", ""]
    lines += evaluation_section(metrics, metrics_path) if metrics else ["No metrics.json was given to the export "
                                                                        "(`--metrics`)."]
    lines += ["", "## Intended use and limits", "",
              "- For research on chest X-ray classification and its explanations. **Not for clinical use**: not a "
              "medical device, not validated on any clinical population, not to inform the care of any patient.",
              "- The map shows where this model's evidence lies, as measured above; a plausible map is not a "
              "diagnosis, and a finding the model does not detect has no map to show.",
              "- Trained on one dataset's images; other hospitals, devices and populations may differ."]
    return "\n".join(lines) + "\n"
