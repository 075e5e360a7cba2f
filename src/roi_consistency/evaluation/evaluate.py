"""The `evaluate` command: does the model rely on the region its map highlights? Every explainer (the
learned map, Grad-CAM and the random control, on the same model) is scored on a labelled test CSV by
the passes (passes.py), against the boxes where given, optionally with the randomisation check
(sanity.py); metrics.json (summary.py, schema.py), report.html and gallery.html (outputs/) follow.

The true box itself, removed or kept alone, is the box control: if removing it does not lower p, no map
can be faithful and inside the box for that finding.

    roi-consistency evaluate --checkpoint ck.pt --csv nih_roi_test.csv --image-root images \
        --bbox BBox_List_2017.csv --out-dir eval
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from roi_consistency.data.boxes import model_boxes, read_masks
from roi_consistency.data.dataset import ImageCSVDataset, dataset_name
from roi_consistency.data.images import ImageCache
from roi_consistency.errors import UserError
from roi_consistency.evaluation import metrics as M
from roi_consistency.evaluation.confounders import audit, confounders_section, read_confounders
from roi_consistency.evaluation.curves import sample_rows
from roi_consistency.evaluation.explainers import build_explainers
from roi_consistency.evaluation.passes import EvalOptions, evaluate_model
from roi_consistency.evaluation.randomisation import frozen_head_check, sanity_pairs
from roi_consistency.evaluation.schema import Metrics, judged_at, maps_of, ratio_key
from roi_consistency.evaluation.summary import summarize
from roi_consistency.files.atomic import write_json
from roi_consistency.files.checkpoint import stamp
from roi_consistency.model.network import ROIModel
from roi_consistency.model.trained import load_trained
from roi_consistency.outputs.gallery import Gallery
from roi_consistency.outputs.report import write_report
from roi_consistency.runtime import environment, pick_device


def evaluate_checkpoint(checkpoint: str, csv_path: str, image_root: str, bbox: str | None = None,
                        out_dir: str = "eval", **options) -> Metrics:
    """Score a checkpoint on a test CSV with every explainer; write metrics.json and report.html into
    out_dir and return the metrics. options: the fields of EvalOptions."""
    opt = EvalOptions(**options)
    dev = pick_device(opt.device)
    model, cfg = load_trained(checkpoint, dev)
    size, r0 = cfg.model.img_size, cfg.method.keep_ratio
    ds = ImageCSVDataset(csv_path, image_root, size, cfg.data.classes, join=True,
                         cache=ImageCache(opt.cache, size) if opt.cache else None)
    if not ds.has_labels:
        raise UserError(f"{csv_path}: evaluation needs a labels column")
    classes = ds.classes  # the model's, then any the CSV labels as a whole that the model scores in parts
    if ds.match and ds.match.joined:
        model.join({classes.index(n): [classes.index(c) for c in cs] for n, cs in ds.match.joined.items()})
    skipped = ds.drop_bad(opt.skip_bad_images, opt.progress)
    boxes = model_boxes(ds, bbox, classes, size)
    masks = read_masks(opt.masks, ds, classes, size) if opt.masks else None
    listed = read_confounders(opt.confounders, ds, classes, size) if opt.confounders else None  # fail early
    ratios = sorted(set(float(r) for r in opt.keep_ratios) | {r0})
    out = Path(out_dir)
    build_explainers(opt.maps, model, cfg, opt.seed)  # an unknown --maps fails now, not after the passes

    def explainers():  # each pass its own, so one pass's random draws never depend on another's
        return build_explainers(opt.maps, model, cfg, opt.seed)
    gallery = Gallery(out / "gallery.html", classes, model.thresholds, r0, explainers(),
                      opt.gallery_limit) if opt.gallery else None
    t = evaluate_model(model, ds, boxes, explainers(), ratios, r0, opt, dev, gallery, masks)
    frozen = randomisation_check(model, cfg, ds, boxes, opt, dev) if opt.sanity else None
    retrained = retrained_head(out, checkpoint)
    sanity = {"frozen_head": frozen, "retrained_head": retrained} if frozen or retrained else None
    found = audit(model, ds, listed[0], explainers(), r0, opt.batch_size, opt.seed, opt.n_examples // 2) \
        if listed else None
    rows = t.drop_unscored()
    y = ds.labels[rows]
    summary = summarize(t, y, cfg, checkpoint, bbox is not None, opt.seed, model.thresholds, csv_path, opt.curve_images)
    confounders = confounders_section(found, opt.confounders, listed[1], opt.seed) if found else None
    result: Metrics = {**summary, "sanity": sanity, "skipped_images": sorted(skipped + t.skipped), "gallery": None,
                       "confounders": confounders, "vocabulary": ds.match.as_dict() if ds.match else None,
                       "datasets": {k: {"csv": str(c), "name": dataset_name(c)}
                                    for k, c in (("trained", cfg.data.train_csv), ("evaluated", csv_path))},
                       "environment": {"trained": model.trained_on, "evaluated": environment(dev)}}
    if gallery is not None:
        result["gallery"] = gallery.finish()
    write_json(out / "metrics.json", result)
    write_report(out / "report.html", result, M.roc_curves(y, t.p_full, classes, result["auroc"]["full"]), t.examples,
                 audit_examples=found.examples if found else [])
    return result


def retrained_head(out: Path, checkpoint: str) -> dict | None:
    """The `sanity` command's result in out_dir, where it checked this checkpoint as it is now."""
    path = out / "sanity.json"
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    if Path(found["checkpoint"]).resolve() != Path(checkpoint).resolve():
        return None
    if found.get("checkpoint_stamp") not in (None, stamp(checkpoint)):  # None: written before it was recorded
        print(f"warning: {path} checked an earlier state of {checkpoint}, which was written again since; left out "
              "of the report (run `roi-consistency sanity` again)", file=sys.stderr)
        return None
    return found["retrained_head"]


def randomisation_check(model: ROIModel, cfg, ds: ImageCSVDataset, boxes: dict, opt: EvalOptions, dev):
    """metrics.json's sanity: the check on sanity_images test images with a finding or a box (None: none)."""
    pairs = sanity_pairs(ds, sample_rows(ds.labels, ds.names, boxes, opt.sanity_images, opt.seed + 5)[0], boxes,
                         model, dev)
    return frozen_head_check(model, cfg.method.mode, pairs, seed=opt.seed, chunk=opt.batch_size) if pairs else None


def fmt(v, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def format_summary(m: Metrics) -> str:
    """The evaluation's headline figures as the few lines `evaluate` prints."""
    r, f, loc = ratio_key(m["keep_ratio"]), m["faithfulness"], m["localisation"]

    ci = (m.get("uncertainty") or {}).get("mean_auroc_full")
    lines = [f"evaluate: {m['n_images']} images; mean AUROC full {fmt(m['mean_auroc']['full'])}"
             + (f" [95% CI {ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")]
    for k in maps_of(m):
        line = (f"  {k:8s} comprehensiveness@{r} {fmt(f[k]['comprehensiveness'][r], '+.4f')}  "
                f"sufficiency@{r} {fmt(f[k]['sufficiency'][r], '+.4f')}  kept {fmt(m['kept_fraction'][k])}")
        if m.get("road"):
            line += f"  ROAD MoRF {fmt(m['road'][k]['morf'][r], '+.4f')} LeRF {fmt(m['road'][k]['lerf'][r], '+.4f')}"
        lines.append(line + (f"  pointing {fmt(loc[k]['pointing_game'], '.3f')}" if loc else ""))
    lm = m.get("localisation_masks")
    if lm:
        lines.append(f"  against {lm['n_masks']} masks: " + "  ".join(
            f"{k} pointing {lm[k]['pointing']:.3f} share {lm[k]['share']:.3f} IoU {lm[k]['iou']:.3f}"
            for k in maps_of(m)))
    if loc and m.get("box_control"):
        lines.append("  per finding: pointing learned / gradcam; p_full -> p with the true box removed")
        for c, bc in m["box_control"].items():
            pc = {k: loc[k]["pointing_by_class"].get(c) for k in ("learned", "gradcam")}
            lines.append(f"    {c:20s} {fmt(pc['learned'], '.2f')} / {fmt(pc['gradcam'], '.2f')}   "
                         f"{bc['p_full']:.2f} -> {bc['p_drop_box']:.2f}  ({bc['n']} boxes)")
    leak, boxed = m.get("leakage") or {}, m.get("leakage_boxed") or {}
    if leak:
        lines.append("  labels predicted from the mask alone (leakage, ~0.5 is good): "
                     + ", ".join(f"{k} {v['mean_auroc']:.3f}" for k, v in leak.items() if v["mean_auroc"] is not None))
    if boxed:
        lines.append(f"  the same on the {boxed['n_images']} boxed images, against the true boxes as the reference: "
                     + ", ".join(f"{k} {v['mean_auroc']:.3f}" for k, v in boxed.items()
                                 if isinstance(v, dict) and v["mean_auroc"] is not None))
    cv = m.get("curves")
    if cv and cv.get("n_pairs"):
        lines.append(f"  deletion / insertion AUC, fill | ROAD ({cv['n_pairs']} pairs on {cv['n_images']} images): "
                     + ", ".join(f"{k} {cv['fill'][k]['deletion']['auc']:.3f}/{cv['fill'][k]['insertion']['auc']:.3f}"
                                 f" | {cv['road'][k]['deletion']['auc']:.3f}/{cv['road'][k]['insertion']['auc']:.3f}"
                                 for k in cv["fill"]))
    lines += sanity_lines(m.get("sanity")) + confounder_lines(m.get("confounders"))
    return "\n".join(lines + calibration_lines(m.get("calibration")))


def sanity_lines(sanity: dict | None) -> list[str]:
    """Both cascades of the randomisation check, a line each."""
    lines, san, r = [], (sanity or {}).get("frozen_head"), (sanity or {}).get("retrained_head")
    if san:
        j = judged_at(san)
        lines.append(f"  randomisation check ({san['n_pairs']} pairs, {' + '.join(san['stages'][:j])} randomised): "
                     + ", ".join(f"{k} median rho {v['median'][j - 1]:+.2f} {'pass' if v['pass'] else 'FAIL'}"
                                 f" ({v['median'][-1]:+.2f} with all {len(san['stages'])} stages random)"
                                 for k, v in san["maps"].items()))
    if r:
        lines.append(f"  the head retrained ({r['n_pairs']} pairs, ceiling {r['ceiling']['median']:+.2f}): learned "
                     f"median rho {r['learned']['median'][r['judged_at'] - 1]:+.2f} after "
                     f"{' + '.join(r['stages'][:r['judged_at']])}, {'pass' if r['pass'] else 'FAIL'}")
    return lines


def calibration_lines(cal: dict | None) -> list[str]:
    if cal:
        ops = [v for v in cal["per_class"].values() if v.get("sensitivity") is not None]
        sens, spec = (np.mean([v[k] for v in ops]) if ops else 0.0 for k in ("sensitivity", "specificity"))
        at = (f"; at the {cal['thresholds']['rule']} thresholds, mean sensitivity {sens:.3f}, specificity {spec:.3f}"
              if ops else "; no thresholds in the checkpoint (roi-consistency calibrate)")
        return [f"  calibration: mean ECE {fmt(cal['mean_ece'])} over the {len(cal.get('mean_ece_over', []))} "
                f"findings with positives ({cal['bins']} bins){at}"]
    return []


def confounder_lines(cf: dict | None) -> list[str]:
    """The confounder audit in a line a set: the reliance, and each map's pointing, share and the mirrored
    region's share."""
    if not cf:
        return []
    lines = [f"  confounder audit ({cf['n_pairs']} pairs on {cf['n_images']} images; reliance: p drop without the "
             "region, fill | ROAD; per map: pointing / share / share of the region mirrored):"]
    for k, v in cf["sets"].items():
        if not v["n_pairs"]:
            continue
        rel = v["reliance"]
        maps = ", ".join(f"{n} {x['pointing']['mean']:.2f} / {x['share']['mean']:.2f} / "
                         f"{x['placebo_share']['mean']:.2f}" for n, x in v["maps"].items())
        lines.append(f"    {k:8s} {v['n_pairs']:4d} pairs: reliance {rel['fill']['mean']:+.3f} | "
                     f"{rel['road']['mean']:+.3f} (log-odds {rel['log_odds']['mean']:+.2f}); {maps}")
    return lines
