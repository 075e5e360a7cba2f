"""Self-contained HTML report of an evaluation: does the model rely on the region it highlights?

`write_report` turns metrics.json content, ROC curves and a few worked examples into one HTML file
(inline CSS, figures as base64 PNG data URIs) that opens anywhere, offline, and can be attached or
archived as is; screenshot.py renders one to a PNG. It reads metrics.json as evaluation/schema.py defines it.
Figures use `matplotlib.figure.Figure` directly: no pyplot global state, no GUI backend needed.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from roi_consistency.evaluation.schema import (
    CONFOUNDER_MEASURES,
    DEFAULT_MAPS,
    IOBB_T,
    SIZES,
    Metrics,
    judged_at,
    maps_of,
    ratio_key,
)
from roi_consistency.files.atomic import write_text
from roi_consistency.runtime import environment_line

MAP_STYLE = {"learned": dict(color="tab:blue", marker="o"), "gradcam": dict(color="tab:orange", marker="s"),
             "random": dict(color="0.45", marker="^", linestyle="--")}


DPI = 100

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 16px}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#555}.meta code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
.howto{background:#f6f8fa;border-left:4px solid #4a7bd0;padding:8px 14px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
.na{color:#aaa}.ci{color:#777;font-size:.85em;white-space:nowrap}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 16px;min-width:120px}
.card .v{font-size:1.6em;font-weight:600}.card .k{color:#555;font-size:.9em}
img{max-width:100%;height:auto}figure{margin:12px 0}figcaption{color:#333;font-size:.92em}
"""


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _mpl(s) -> str:
    """Text for matplotlib: a '$' in a class or file name must not switch on mathtext."""
    return str(s).replace("$", r"\$")


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '<span class="na">n/a</span>'
    return f"{float(v):.{digits}f}"


def _ci(ci) -> str:
    """A 95 % interval, small, after its figure ('' where there is none)."""
    return f' <span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>' if ci else ""


def _png(fig: Figure) -> str:
    """The figure as a PNG data URI, reduced to a 256-colour palette: ~2.5x smaller, no visible loss here."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    fig.clear()
    buf.seek(0)
    with Image.open(buf) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _img(uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{_esc(alt)}">{cap}</figure>'


def _roc_figure(roc: dict) -> str:
    fig = Figure(figsize=(7, 5.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.5", label="chance")
    colors = colormaps["tab20"].colors  # 14 NIH classes: tab10 would repeat colours
    for i, (cls, c) in enumerate(roc.items()):
        ax.plot(c["fpr"], c["tpr"], linewidth=1.3, color=colors[(2 * i + i // 10) % 20],
                linestyle="-" if i < 10 else "--", label=_mpl(f"{cls} (AUC {float(c['auc']):.3f})"))
    if not roc:
        ax.text(0.5, 0.5, "no class with a defined AUROC", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title="ROC, full image")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig)


FILL_CURVES = {"comprehensiveness": "p_full − p_drop  (higher = region matters)",
               "sufficiency": "p_full − p_crop  (lower = region suffices)"}
ROAD_CURVES = {"morf": "p_full − p_MoRF  (ROAD; higher = region matters)",
               "lerf": "p_full − p_LeRF  (ROAD; lower = region suffices)"}


def _faithfulness_figure(faith: dict, keep_ratio: float, what: dict = FILL_CURVES) -> str:
    maps = tuple(faith) or DEFAULT_MAPS
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, (metric, ylabel) in zip(axes, what.items()):
        ticks = set()
        for name in maps:
            curve = (faith.get(name) or {}).get(metric) or {}
            pts = sorted((float(k), v) for k, v in curve.items() if v is not None)
            if pts:
                ticks.update(x for x, _ in pts)
                ax.plot(*zip(*pts), label=name, **MAP_STYLE.get(name, dict(marker="x")))
        ax.set_xscale("log")
        if ticks:
            ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
            ax.minorticks_off()
        ax.axvline(keep_ratio, color="0.6", linestyle=":", linewidth=1)
        ax.axhline(0, color="0.8", linewidth=0.8)
        ax.set(xlabel="keep ratio r (share of pixels in the region)", ylabel=ylabel,
               title=f"{metric if what is FILL_CURVES else 'ROAD ' + metric.upper()} vs r")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _ci_figure(unc: dict, keep_ratio: float) -> str | None:
    """The headline figures per map with their 95 % bootstrap intervals as error bars."""
    per_map = unc.get("maps") or {}
    shown = [("comprehensiveness", f"comprehensiveness@{keep_ratio:g} ↑"), ("road_morf", f"ROAD MoRF@{keep_ratio:g} ↑"),
             ("pointing_game", "pointing game ↑")]
    shown = [(k, t) for k, t in shown if any((v.get(k) or {}).get("ci95") for v in per_map.values())]
    if not shown:
        return None
    fig = Figure(figsize=(3.6 * len(shown), 3.2))
    for ax, (key, title) in zip(np.atleast_1d(fig.subplots(1, len(shown))), shown):
        names = [n for n in per_map if (per_map[n].get(key) or {}).get("ci95")]
        vals = [per_map[n][key]["mean"] for n in names]
        cis = [per_map[n][key]["ci95"] for n in names]
        err = np.array([[v - lo, hi - v] for v, (lo, hi) in zip(vals, cis)]).T
        ax.bar(names, vals, yerr=err, capsize=4, color=[MAP_STYLE.get(n, {}).get("color", "tab:gray") for n in names])
        ax.axhline(0, color="0.6", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _draw_boxes(ax, boxes) -> None:
    for box in boxes or []:
        label, x, y, w, h = box
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.5))
        ax.text(x, y, _mpl(label), color="black", fontsize=7, va="bottom",
                bbox=dict(facecolor="lime", edgecolor="none", pad=1, alpha=0.85))


def _example_figure(ex: dict, names: tuple[str, ...]) -> str:
    gray = np.asarray(ex["gray"], dtype=np.float32)
    h, w = gray.shape[:2]
    extent = (0, w, h, 0)  # continuous pixel coordinates, so boxes (x, y, w, h) land on their pixels
    maps = ex.get("maps") or {}
    fig = Figure(figsize=(2.6 * (1 + len(names)), 2.8))
    axes = fig.subplots(1, 1 + len(names))
    for ax, name in zip(axes, ("image",) + names):
        ax.set_axis_off()
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
        if name == "image":
            ax.set_title("image + boxes", fontsize=9)
        elif name not in maps:
            ax.imshow(np.zeros_like(gray), cmap="gray", vmin=0, vmax=1, alpha=0.6, extent=extent)
            ax.text(w / 2, h / 2, "not available", color="white", ha="center", va="center", fontsize=9)
            ax.set_title(name, fontsize=9)
        else:
            m = maps[name] or {}
            if m.get("map") is not None:
                ax.imshow(np.asarray(m["map"], dtype=np.float32), cmap="jet", vmin=0, vmax=1, alpha=0.45,
                          extent=extent, interpolation="bilinear")
            title = name
            mask = m.get("mask")
            if mask is not None:
                mask = np.asarray(mask, dtype=bool)
                title += f" · kept {mask.mean():.0%}"
                if mask.any() and not mask.all():  # a constant mask has no contour (matplotlib would warn)
                    mh, mw = mask.shape
                    xs, ys = (np.arange(mw) + 0.5) * w / mw, (np.arange(mh) + 0.5) * h / mh
                    ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors="white", linewidths=1.2)
            ax.set_title(title, fontsize=9)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        _draw_boxes(ax, ex.get("boxes"))
    fig.tight_layout()
    return _png(fig)


def _example_caption(ex: dict) -> str:
    probs = ex.get("probs") or {}
    labels = list(ex.get("labels") or [])
    parts = [f"<b>{_esc(ex.get('image', '?'))}</b> — labels: {_esc(', '.join(labels) or 'No Finding')}"]
    for lab in labels:
        ps = " · ".join(f"p_{k} {_fmt((probs.get(k) or {}).get(lab), 2)}" for k in ("full", "crop", "drop"))
        parts.append(f"{_esc(lab)}: {ps}")
    return "<br>".join(parts)


def _headline(metrics: Metrics) -> str:
    r = metrics.get("keep_ratio")
    mean = metrics.get("mean_auroc") or {}
    learned = {k: (mean.get(k) or {}).get("learned") for k in ("crop", "drop")}
    full_ci = (metrics.get("uncertainty") or {}).get("mean_auroc_full")
    cards = "".join(f'<div class="card"><div class="k">mean AUROC, {k}</div>'
                    f'<div class="v">{_fmt(v)}{_ci(c)}</div></div>'
                    for k, v, c in (("full", mean.get("full"), full_ci), ("crop (learned)", learned["crop"], None),
                                    ("drop (learned)", learned["drop"], None)))
    faith, loc = metrics.get("faithfulness") or {}, metrics.get("localisation") or {}
    kept, road = metrics.get("kept_fraction") or {}, metrics.get("road") or {}
    unc = (metrics.get("uncertainty") or {}).get("maps") or {}
    rows = []
    for name in maps_of(metrics):
        f, rd, u = faith.get(name) or {}, road.get(name) or {}, unc.get(name) or {}
        figs = [f.get("comprehensiveness"), f.get("sufficiency"), rd.get("morf"), rd.get("lerf")]
        ci = [(u.get(k) or {}).get("ci95") for k in ("comprehensiveness", "sufficiency", "road_morf", "road_lerf")]
        cells = "".join(f"<td>{_fmt((c or {}).get(ratio_key(r)))}{_ci(i)}</td>" for c, i in zip(figs, ci))
        pg = (loc.get(name) or {}).get("pointing_game")
        pg = f"{_fmt(pg)}{_ci((u.get('pointing_game') or {}).get('ci95'))}"
        auc = "".join(f"<td>{_fmt((mean.get(k) or {}).get(name))}</td>" for k in ("crop", "drop"))
        rows.append(f"<tr><td>{name}</td>{cells}<td>{pg}</td>{auc}<td>{_fmt(kept.get(name))}</td></tr>")
    return (f'<div class="cards">{cards}</div>'
            f"<table><tr><th>map</th><th>comprehensiveness@{r:g} ↑</th><th>sufficiency@{r:g} ↓</th>"
            f"<th>ROAD MoRF@{r:g} ↑</th><th>ROAD LeRF@{r:g} ↓</th>"
            f"<th>pointing game ↑</th><th>AUROC, crop</th><th>AUROC, drop</th><th>kept fraction</th></tr>"
            f"{''.join(rows)}</table>{_paired(metrics.get('uncertainty') or {})}"
            f"{_sanity_summary(metrics.get('sanity'))}")


def _paired(unc: dict) -> str:
    """The paired bootstrap tests of the learned map against Grad-CAM, as one sentence."""
    tests = unc.get("learned_vs_gradcam") or {}
    parts = [f"{k.replace('_', ' ')} {v['difference']:+.3f}{_ci(v['ci95'])}, p = {v['p']:.3f}"
             for k, v in tests.items() if v.get("difference") is not None]
    if not parts:
        return ""
    return (f"<p>Learned − Grad-CAM, paired over the same pairs and boxes: {'; '.join(parts)}. Brackets: 95 % "
            f"intervals from {unc.get('n_resamples')} bootstrap resamples of the test images (seed "
            f"{unc.get('seed')}); p: two-sided bootstrap p-value of no difference.</p>")


def _class_table(metrics: dict) -> str:
    auroc = metrics.get("auroc") or {}
    per_map = {"full": auroc.get("full") or {}, "crop": (auroc.get("crop") or {}).get("learned") or {},
               "drop": (auroc.get("drop") or {}).get("learned") or {}}
    rows, left_out = [], []
    for cls in metrics.get("classes") or []:
        vals = [per_map[c].get(cls) for c in ("full", "crop", "drop")]
        if all(v is None for v in vals):
            left_out.append(cls)
            continue
        rows.append(f"<tr><td>{_esc(cls)}</td>" + "".join(f"<td>{_fmt(v)}</td>" for v in vals) + "</tr>")
    note = ""
    if left_out:
        note = (f"<p class='na'>Left out (only one label value in the test set, AUROC undefined): "
                f"{_esc(', '.join(left_out))}.</p>")
    return ("<table><tr><th>class</th><th>full</th><th>crop (only the learned mask kept)</th>"
            "<th>drop (the learned mask removed)</th></tr>"
            + "".join(rows) + "</table>" + note)


def _localisation(loc: dict | None, box_control: dict | None = None) -> str:
    if not loc:
        return ("<p>No bounding-box file was given to the evaluation, so localisation (pointing game, IoBB) "
                "was not measured.</p>")
    maps = tuple(k for k in loc if k != "n_boxes")
    rows = []
    for name in maps:
        m = loc.get(name) or {}
        iobb = m.get("iobb_acc") or {}
        rows.append(f"<tr><td>{name}</td><td>{_fmt(m.get('pointing_game'))}</td>"
                    + "".join(f"<td>{_fmt(iobb.get(t))}</td>" for t in IOBB_T) + "</tr>")
    html = (f"<p>{_esc(loc.get('n_boxes', '?'))} ground-truth boxes.</p>"
            "<table><tr><th>map</th><th>pointing game</th>" + "".join(f"<th>IoBB &gt; {t}</th>" for t in IOBB_T)
            + "</tr>" + "".join(rows) + "</table>")
    found = list((loc.get("learned") or {}).get("pointing_by_class") or {})
    if not found:
        return html
    control = box_control or {}
    head = "".join(f"<th>pointing: {name}</th>" for name in maps)
    rows = []
    for c in found:
        bc = control.get(c) or {}
        rows.append(f"<tr><td>{_esc(c)}</td><td>{_esc(bc.get('n', ''))}</td>"
                    + "".join(f"<td>{_fmt((loc.get(name) or {}).get('pointing_by_class', {}).get(c))}</td>"
                              for name in maps)
                    + "".join(f"<td>{_fmt(bc.get(k))}</td>" for k in ("p_full", "p_drop_box", "p_crop_box"))
                    + "</tr>")
    return html + ("<p>Per finding, and the true box itself as the region: the mean probability of the finding "
                   "on the full image, with its box removed, and with only its box kept. Where removing the box "
                   "does not lower the probability, the model does not rely on the box for that finding, and no "
                   "map can be both faithful and inside it.</p>"
                   f"<table><tr><th>finding</th><th>boxes</th>{head}<th>p full</th><th>p, box removed</th>"
                   "<th>p, box only</th></tr>" + "".join(rows) + "</table>")


def _masks(loc: dict | None) -> str:
    """Localisation against ground-truth masks (evaluate --masks), one row per map."""
    if not loc:
        return ""
    maps = [k for k in loc if k != "n_masks"]
    rows = "".join(f"<tr><td>{_esc(k)}</td>" + "".join(f"<td>{_fmt(loc[k].get(f))}</td>" for f in
                                                     ("pointing", "share", "iou")) + "</tr>" for k in maps)
    return (f"<h3 id='masks'>Against masks</h3><p>{loc['n_masks']} ground-truth masks: whether the map's maximum "
            "lies in the mask, the share of its top-r region inside the mask, and their intersection over union.</p>"
            "<table><tr><th>map</th><th>pointing</th><th>share of the region in the mask</th><th>IoU</th></tr>"
            f"{rows}</table>")


def _by_size(size: dict | None) -> str:
    """Pointing and IoBB per tercile of box area, one row per map."""
    if not size or not size.get("n"):
        return ""
    cuts, n = size.get("cut_points") or [math.nan, math.nan], size["n"]
    head = "".join(f"<th>{t} ({n.get(t, 0)} boxes)</th>" for t in SIZES)
    rows = "".join(f"<tr><td>{name}</td>" + "".join(
        f"<td>{_fmt((v.get(t) or {}).get('pointing_game'))} / {_fmt((v.get(t) or {}).get('iobb_acc_0.1'))}</td>"
        for t in SIZES) + "</tr>" for name, v in size.items() if name not in ("cut_points", "n"))
    return (f"<p>By lesion size: pointing game / IoBB &gt; 0.1 per tercile of box area (cut at "
            f"{_fmt(100 * cuts[0], 2)} % and {_fmt(100 * cuts[1], 2)} % of the image).</p>"
            f"<table><tr><th>map</th>{head}</tr>{rows}</table>")


def _leakage(leak: dict | None, boxed: dict | None = None) -> str:
    if not leak:
        return ""
    boxed = boxed or {}
    ref = {k: v for k, v in boxed.items() if isinstance(v, dict)}
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_fmt((leak.get(k) or {}).get('mean_auroc'))}</td>"
                   + (f"<td>{_fmt((ref.get(k) or {}).get('mean_auroc'))}</td>" if ref else "") + "</tr>"
                   for k in list(leak) + [k for k in ref if k not in leak])
    extra = (f"<th>on the {boxed['n_images']} boxed images</th>" if ref else "")
    note = (" Where findings sit in typical places, even a perfect localiser gives the label away: the last "
            "column compares the masks with the ground-truth boxes themselves on the images that have boxes; a "
            "mask well above the boxes encodes more than where the evidence is." if ref else "")
    return ("<h2 id='leakage'>Leakage check</h2><p>How well the labels can be predicted from the binary mask "
            "alone (logistic "
            "regression on the mask pooled to 16×16, cross-validated). Near 0.5 is good; far above the random mask "
            "means the mask's shape encodes the answer instead of pointing at evidence." + note + "</p>"
            "<table><tr><th>map</th><th>mean AUROC from the mask alone</th>" + extra + "</tr>" + rows + "</table>")


def _curves_figure(cv: dict) -> str:
    """Mean deletion and insertion curves per map, with the fill (top) and with ROAD (bottom)."""
    fig = Figure(figsize=(11, 7.2))
    axes = fig.subplots(2, 2, sharex=True)
    x = cv["ratios"]
    for row, kind in zip(axes, ("fill", "road")):
        for ax, order in zip(row, ("deletion", "insertion")):
            for name, v in (cv.get(kind) or {}).items():
                c = v[order]
                if c["curve"]:
                    style = {**MAP_STYLE.get(name, dict(marker="x")), "markersize": 3}
                    ax.plot(x, c["curve"], label=f"{name} (AUC {c['auc']:.3f})", **style)
            better = "lower" if order == "deletion" else "higher"
            ax.set(ylim=(0, 1.02), ylabel="p of the finding", title=f"{order}, {'ROAD' if kind == 'road' else 'fill'}"
                   f" ({better} area = better)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    for ax, what in zip(axes[1], ("removed", "kept")):
        ax.set_xlabel(f"share of pixels {what}, the map's top first")
    fig.tight_layout()
    return _png(fig)


def _curves(cv: dict | None) -> str:
    """The areas under the deletion and insertion curves, with their intervals, and the curves."""
    if not cv or not cv.get("n_pairs"):
        return ""
    cols = [(k, o) for k in ("fill", "road") for o in ("deletion", "insertion")]
    head = "".join(f"<th>{o} AUC, {'ROAD' if k == 'road' else 'fill'} {'↓' if o == 'deletion' else '↑'}</th>"
                   for k, o in cols)
    rows = "".join(f"<tr><td>{_esc(name)}</td>" + "".join(
        f"<td>{_fmt(cv[k][name][o]['auc'])}{_ci(cv[k][name][o]['auc_ci95'])}</td>" for k, o in cols) + "</tr>"
        for name in cv["fill"])
    cap = cv.get("curve_images")
    sampled = (f"{cv['n_images']} test images drawn (seeded) of the {cv['images_with_pairs']} with a finding or a "
               f"box (--curve-images {cap})" if cap is not None and cv["images_with_pairs"] > cap else
               f"all {cv['n_images']} test images with a finding or a box")
    return ("<h3>Deletion and insertion curves</h3><p>The probability of each true finding as its map's top pixels "
            f"are removed (deletion) or kept alone (insertion), on {len(cv['ratios'])} points from 0 to 100 % of "
            f"the image; the area under each curve over [0, 1] (RISE) summarises it. {sampled}, "
            f"{cv['n_pairs']} (image, finding) pairs.</p><table><tr><th>map</th>{head}</tr>{rows}</table>"
            + _img(_curves_figure(cv), "deletion and insertion curves"))


SANITY_STYLE = {**MAP_STYLE, "edges": dict(color="tab:green", marker="D", linestyle=":")}


def _sanity_figure(san: dict) -> str:
    """Median rank correlation of each map with its original as the classifier is randomised top-down."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot()
    steps = np.arange(1, len(san["stages"]) + 1)
    for name, v in san["maps"].items():
        style = SANITY_STYLE.get(name, dict(marker="x"))
        ax.plot(steps, v["median"], label=f"{name} ({'passes' if v['pass'] else 'fails'})", **style)
        q = np.array(v["quartiles"])
        ax.fill_between(steps, q[:, 0], q[:, 1], color=style.get("color", "0.5"), alpha=0.12)
    ax.axhline(san["pass_below"], color="tab:red", linestyle="--", linewidth=1, label="pass below")
    ax.axvline(judged_at(san), color="0.4", linestyle=":", linewidth=1, label="verdict")
    ax.set_xticks(steps, [f"+{n}" for n in san["stages"]], fontsize=8, rotation=30)
    ax.set(ylim=(-1, 1.05), xlabel="stages randomised, top-down, cumulative",
           ylabel="Spearman ρ with the original map")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _png(fig)


def _verdict_at(v: dict, judged: int) -> str:
    return f"{'passes' if v['pass'] else '<b>fails</b>'} (median ρ {_fmt(v['median'][judged - 1], 2)})"


def _sanity_summary(sanity: dict | None) -> str:
    """The learned map's verdicts, the fair one (the head retrained) first, the frozen head's beside it."""
    if not sanity or not (sanity.get("frozen_head") or sanity.get("retrained_head")):
        return ""
    r, f = sanity.get("retrained_head"), sanity.get("frozen_head")
    parts = [f"with its head retrained against each randomised classifier (the fair check) the learned map "
             f"{_verdict_at({'pass': r['pass'], 'median': r['learned']['median']}, r['judged_at'])}" if r else
             "the check with the head retrained, the fair one for a learned map, was not run "
             "(<code>roi-consistency sanity</code>)"]
    maps = (f or {}).get("maps") or {}
    parts += [f"{who} {_verdict_at(maps[name], judged_at(f))}" for name, who in
              (("learned", "with its head frozen the learned map"), ("gradcam", "Grad-CAM")) if name in maps]
    return f"<p><a href='#sanity'>Randomisation check</a>: {'; '.join(parts)}.</p>"


def _sanity(sanity: dict | None) -> str:
    """Both cascades of the randomisation check, where they were run: the retrained head's, the fair one for a
    map that is trained against the classifier, first."""
    if not sanity:
        return ""
    return ("<h2 id='sanity'>Sanity: the randomisation check</h2><p>Does the map depend on the model? The "
            "classifier's top stages are re-initialised and the map drawn again (Adebayo et al. 2018). The learned "
            "map is trained against the classifier, so the fair check trains its head again against each "
            "randomised classifier, as a post-hoc map is recomputed. With the head frozen, the head keeps in its own "
            "weights what it learnt from the intact classifier, so its map can stay put however the classifier "
            "changes: that cascade is shown beside, as a bound on how much the head alone carries.</p>"
            + _sanity_summary(sanity) + _retrained_head(sanity.get("retrained_head"))
            + _frozen_head(sanity.get("frozen_head")))


def _retrained_head(r: dict | None) -> str:
    if not r:
        return ("<p>The retrained-head cascade was not run: <code>roi-consistency sanity</code> before "
                "<code>evaluate</code>, into the same <code>--out-dir</code>, adds it here.</p>")
    j = r["judged_at"]
    learned = r["learned"]
    cells, head = _rho_cells(learned, 2), _stage_heads(r["stages"])
    return ("<h3>The head retrained</h3><p>At each step the mask stage is trained again, from its first step and "
            "with the checkpoint's settings, against the randomised classifier, and its map compared with the "
            f"original on {r['n_pairs']} pairs; the ceiling is a second mask stage on the intact classifier with "
            f"another seed. The map passes when the median ρ after + {_esc(r['stages'][j - 1])} is below "
            f"{r['pass_below']:g} and below half the ceiling. {r['mask_epochs']} mask epoch(s) a step; "
            f"{r['cost_s']:.0f} s in all.</p><table><tr><th>map</th><th>ceiling</th>{head}<th>verdict</th></tr>"
            f"<tr><td>learned</td><td>{_fmt(r['ceiling']['median'], 2)}{_ci(r['ceiling']['median_ci95'])}</td>"
            f"{cells}<td>{'pass' if r['pass'] else '<b>fail</b>'}</td></tr></table>")


def _rho_cells(v: dict, digits: int = 3) -> str:
    return "".join(f"<td>{_fmt(m, digits)}{_ci(c)}</td>" for m, c in zip(v["median"], v["median_ci95"]))


def _stage_heads(stages: list[str]) -> str:
    return "".join(f"<th>+ {_esc(n)}</th>" for n in stages)


def _frozen_head(san: dict | None) -> str:
    if not san:
        return ""
    j = judged_at(san)

    def verdict(v: dict) -> str:
        at = (v.get("median_abs") or [None] * j)[j - 1]
        return f"{'pass' if v['pass'] else '<b>fail</b>'} (median |ρ| {_fmt(at, 2)})"
    rows = "".join(f"<tr><td>{_esc(k)}</td>{_rho_cells(v)}<td>{verdict(v)}</td></tr>"
                   for k, v in san["maps"].items())
    head = _stage_heads(san["stages"])
    return ("<h3>The head frozen</h3><p>The classifier's stages are re-initialised top-down, cumulatively, and "
            f"each map is drawn again on {san['n_pairs']} (image, finding) pairs, the learned map with the head "
            "trained on the intact classifier; a map that hardly changes explains the image, not the model. Cells: "
            "the median Spearman correlation with the original after each step, with its interval. "
            f"A map passes when the median falls below {san['pass_below']:g} once the top {j} "
            f"stages are random (after + {_esc(san['stages'][j - 1])}; the median of |ρ| there is given beside the "
            "verdict). The steps after it show how far down the map's dependence on the trained weights reaches. "
            f"Randomised: {_esc(san['randomised'])}. The edge map ignores the model: the control that must fail.</p>"
            f"<table><tr><th>map</th>{head}<th>verdict</th></tr>{rows}</table>"
            + _img(_sanity_figure(san), "randomisation check", "Median and quartiles over the pairs."))


def _reliability_figure(rel: dict) -> str:
    """Observed frequency against mean probability per bin, over every (image, finding) pair, with the
    pairs per bin below: a calibrated model lies on the diagonal."""
    fig = Figure(figsize=(5.2, 5.6))
    ax, axn = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    pts = [(c, f) for c, f in zip(rel["confidence"], rel["frequency"]) if c is not None]
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.5", label="calibrated")
    if pts:
        ax.plot(*zip(*pts), marker="o", color="tab:blue", label=f"model (ECE {rel['ece']:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency", title="Reliability, every finding pooled")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    k = len(rel["count"])
    axn.bar((np.arange(k) + 0.5) / k, rel["count"], width=0.9 / k, color="0.6")
    axn.set_yscale("log")
    axn.set(xlabel="predicted probability (bin)", ylabel="pairs")
    fig.tight_layout()
    return _png(fig)


SET_NAMES = {"all": "all pairs", "relied": "the model relies on the region", "ignored": "the model ignores the region"}


def _log_odds_cell(rel: dict) -> str:
    r = rel.get("log_odds")  # absent from a metrics.json written before it was measured
    return f"<td>{_fmt(r['mean'], 2)}{_ci(r['ci95'])}</td>" if r else "<td>n/a</td>"


def _mean_ci_cell(r: dict | None) -> str:
    return f"<td>{_fmt(r['mean'])}{_ci(r['ci95'])}</td>" if r else "<td>n/a</td>"  # n/a: not measured then


def _confounder_tables(cf: dict) -> str:
    """The reliance per set of pairs, then each map's measures per set."""
    rows = "".join(f"<tr><td>{SET_NAMES[k]}</td><td>{v['n_pairs']}</td>" + "".join(
        f"<td>{_fmt(r['mean'])}{_ci(r['ci95'])}</td><td>{_fmt(r['share_above'], 2)}</td>"
        for r in (v["reliance"]["fill"], v["reliance"]["road"])) + _log_odds_cell(v["reliance"]) + "</tr>"
        for k, v in cf["sets"].items())
    head = ("<table><tr><th>pairs</th><th>n</th><th>reliance, fill</th><th>share &gt; "
            f"{cf['relies_above']:g}</th><th>reliance, ROAD</th><th>share &gt; {cf['relies_above']:g}</th>"
            "<th>log-odds drop, fill</th></tr>")
    cells = "".join(f"<tr><td>{SET_NAMES[k]}</td><td>{_esc(name)}</td>" + "".join(
        _mean_ci_cell(m.get(x)) for x in CONFOUNDER_MEASURES)
        + "</tr>" for k, v in cf["sets"].items() if v["n_pairs"] for name, m in v["maps"].items())
    maps = ("<table><tr><th>pairs</th><th>map</th><th>pointing</th><th>pointing, within "
            f"{100 * cf['tolerance']:.1f} % of the side</th><th>share</th><th>energy</th>"
            "<th>share of the mirrored region</th></tr>")
    return head + rows + "</table>" + maps + cells + "</table>"


def _confounders(cf: dict | None, examples: list[dict]) -> str:
    """The confounder audit: does the model rely on the listed regions, and does each map say so?"""
    if not cf:
        return ""
    figures = "".join(_img(_example_figure(ex, tuple(ex["maps"])), f"confounder {ex['image']}",
                           f"<b>{_esc(ex['image'])}</b>, {_esc(ex['finding'])}: p {ex['p']['full']:.2f} on the film, "
                           f"{ex['p']['fill']:.2f} without the region (fill), {ex['p']['road']:.2f} (ROAD)")
                      for ex in examples)
    left = (f" {len(cf['left_out_images'])} listed images are not in the test CSV and were left out."
            if cf["left_out_images"] else "")
    return ("<h2 id='confounders'>Confounder audit</h2><p>Regions that should not be evidence "
            f"(<code>{_esc(cf['file'])}</code>: {cf['n_pairs']} (image, finding) pairs on {cf['n_images']} "
            f"images).{left} <i>Reliance</i>: how much the finding's probability drops when the region is removed, "
            f"with the model's fill and with ROAD's imputation; the model relies on the region where it drops by "
            f"more than {cf['relies_above']:g} (fill), and ignores it where it drops by less than "
            f"{cf['ignores_below']:g}. Where p is already small it cannot drop by much, even when the region "
            "carries most of the finding's logit: the drop in log-odds shows that. For each map, drawn for the "
            "pair's finding: <i>pointing</i>, its maximum lies "
            "in the region (strictly, and within the pointing game's tolerance); <i>share</i>, the share of the "
            "region inside the map's mask (confounder sensitivity, Sun et al. 2023); <i>energy</i>, the share of the "
            "map's positive mass inside the region; <i>share of the mirrored region</i>, the same box mirrored left "
            "to right, where the region is not: a map that lights the region itself covers it more than its mirror "
            "image, one that lights that part of every film covers both. A map that shows what the model relies on "
            "scores high where it "
            "relies on the region and low where it ignores it. Brackets: 95 % bootstrap intervals over the listed "
            "images.</p>" + _confounder_tables(cf) + figures)


def _calibration(cal: dict | None) -> str:
    """ECE per finding, and sensitivity and specificity at the checkpoint's thresholds."""
    if not cal:
        return ""
    th = cal.get("thresholds")
    where = (f"Thresholds: {th['rule']}, chosen on {_esc(th['csv'])} ({th['n_images']} images)." if th else
             "This checkpoint has no thresholds; choose them on the validation CSV with <code>roi-consistency "
             "calibrate</code>.")
    warn = f"<p><b>Warning:</b> {_esc(cal['warning'])}.</p>" if cal.get("warning") else ""
    rows = "".join(
        f"<tr><td>{_esc(c)}</td><td>{v['n_pos']}</td><td>{_fmt(v['ece'])}{_ci(v.get('ece_ci95'))}</td>"
        f"<td>{_fmt(v.get('threshold'))}</td><td>{_fmt(v.get('sensitivity'))}{_ci(v.get('sensitivity_ci95'))}</td>"
        f"<td>{_fmt(v.get('specificity'))}{_ci(v.get('specificity_ci95'))}</td></tr>"
        for c, v in cal["per_class"].items())
    return (f"<h2 id='calibration'>Calibration and operating points</h2><p>Expected calibration error (ECE, "
            f"{cal['bins']} equal-width bins: the pair-weighted gap between the predicted probability and the observed "
            f"frequency), mean over the {len(cal.get('mean_ece_over') or [])} findings with positives in the test set "
            f"{_fmt(cal['mean_ece'])}. {where} A finding is called positive at or "
            f"above its threshold, as <code>infer</code> writes <code>positive</code>.</p>{warn}"
            "<table><tr><th>finding</th><th>positives</th><th>ECE ↓</th><th>threshold</th><th>sensitivity</th>"
            f"<th>specificity</th></tr>{rows}</table>"
            + _img(_reliability_figure(cal["reliability"]), "reliability diagram"))


ROAD_NOTE = (
    "<b>ROAD.</b> Above, removed pixels show the model's fill, and the classifier was trained on masked images "
    "with that same fill. Below, ROAD (Rong et al. 2022) fills them from their neighbours instead (noisy linear "
    "imputation), a removal the classifier never saw and whose shape gives little away. <i>MoRF</i>: the top-r "
    "region removed, scored like comprehensiveness; <i>LeRF</i>: only the top-r region kept, scored like "
    "sufficiency. Where a map's comprehensiveness is well above its ROAD MoRF, part of that figure came from the "
    "fill rather than from the region; a lead over Grad-CAM and the random map that holds under ROAD does not.")


def _environment(env: dict | None) -> str:
    """Where the model was trained and where it was evaluated: figures compare only between runs trained
    on the same kind of machine (EXPERIMENTS.md round 10)."""
    env = env or {}
    trained, evaluated = (_esc(environment_line(env.get(k))) for k in ("trained", "evaluated"))
    return f"Trained on {trained} · evaluated on {evaluated}"


def _datasets(metrics: dict) -> str:
    """Which data the model was trained on and which it is scored on, and how the test CSV's finding names
    were read where they are another dataset's."""
    def one(d: dict | None) -> str:
        d = d or {}
        return f"<b>{_esc(d.get('name') or 'a dataset')}</b> (<code>{_esc(Path(d.get('csv') or '?').name)}</code>)"
    ds = metrics.get("datasets") or {}
    line = f"Trained on {one(ds.get('trained'))} · evaluated on {one(ds.get('evaluated'))}"
    v = metrics.get("vocabulary")
    if v:
        read = "; ".join(f"{' + '.join(names)} read as {c}" for c, names in v["read_as"].items())
        line += (f". The test CSV names findings another way: {_esc(read) or 'no name read as another'}"
                 + (f"; unknown here, as the CSV never names them: {_esc(', '.join(v['unlabelled']))}"
                    if v["unlabelled"] else "")
                 + "".join(f"; {_esc(n)} scored by the higher probability of {_esc(' and '.join(cs))}, its maps "
                           "explaining the more probable" for n, cs in (v.get("joined") or {}).items())
                 + (f"; left out, as the model lacks them: {_esc(', '.join(v['unscored']))}" if v["unscored"] else ""))
    return line


def write_report(out_path, metrics: Metrics, roc: dict, examples: list[dict],
                 title: str = "ROI-consistency evaluation", audit_examples: list[dict] | None = None) -> Path:
    """Write the HTML report to `out_path` atomically and return its Path."""
    out = Path(out_path)
    r = float(metrics.get("keep_ratio", 0.1))
    metrics = {**metrics, "keep_ratio": r}
    fill = metrics.get("fill", "ImageNet mean")
    meta = (f"Checkpoint <code>{_esc(metrics.get('checkpoint', '?'))}</code> · "
            f"{_esc(metrics.get('n_images', '?'))} test images · keep ratio r = {r:g} · "
            f"removed pixels filled with {_esc(fill)}")
    gallery = metrics.get("gallery")
    if gallery:
        meta += (f" · <a href='{_esc(gallery['page'])}'>the gallery</a>: {gallery['n_cards']} cards of "
                 f"{gallery['n_images']} test images, to sort, filter and open")
    meta += f"<br>{_datasets(metrics)}<br>{_environment(metrics.get('environment'))}"
    howto = (
        "<p><b>How to read this.</b> Each map (learned mask, Grad-CAM, random) is cut to its top-r pixels. "
        "<i>Comprehensiveness</i> = p_full − p_drop, the drop in the true-class probability when that region is "
        "removed: high, and clearly above the random map, means the prediction depends on the highlighted region. "
        "<i>Sufficiency</i> = p_full − p_crop, the drop when only the region is kept: low means the region alone "
        "keeps the prediction. <i>Pointing game</i> (the map's maximum falls in a ground-truth box) and "
        "<i>IoBB</i> (share of the region inside the box) check the region against radiologists' boxes. "
        "The random mask of the same area is the floor; Grad-CAM on the same model is the post-hoc reference. "
        "AUROC on crop / drop images shows the same question at the dataset level.</p>")
    examples_html = "".join(_img(_example_figure(ex, maps_of(metrics)), f"example {ex.get('image', '')}",
                                 _example_caption(ex))
                            for ex in examples) or "<p>No examples.</p>"
    body = [
        f"<h1>{_esc(title)}</h1><p class='meta'>{meta}</p><div class='howto'>{howto}</div>",
        "<h2 id='headline'>Headline numbers</h2>", _headline(metrics),
        *([_img(ci_fig, "headline figures with 95% intervals", "Error bars: 95 % bootstrap intervals over the "
                "test images.")] if (ci_fig := _ci_figure(metrics.get("uncertainty") or {}, r)) else []),
        "<h2 id='auroc'>Per-class AUROC</h2>", _class_table(metrics), _img(_roc_figure(roc or {}), "ROC curves"),
        "<h2 id='faithfulness'>Faithfulness vs keep ratio</h2>",
        _img(_faithfulness_figure(metrics.get("faithfulness") or {}, r), "faithfulness curves",
             f"Dotted vertical line: the evaluation keep ratio r = {r:g}."),
        *([f"<p>{ROAD_NOTE}</p>", _img(_faithfulness_figure(metrics["road"], r, ROAD_CURVES), "ROAD curves",
                                        "The same removals, with ROAD's imputation in place of the fill.")]
          if metrics.get("road") else []),
        _curves(metrics.get("curves")),
        "<h2 id='localisation'>Localisation</h2>",
        _localisation(metrics.get("localisation"), metrics.get("box_control")),
        _masks(metrics.get("localisation_masks")),
        _by_size(metrics.get("localisation_by_size")),
        _leakage(metrics.get("leakage"), metrics.get("leakage_boxed")),
        _sanity(metrics.get("sanity")),
        _confounders(metrics.get("confounders"), audit_examples or []),
        _calibration(metrics.get("calibration")),
        "<h2 id='examples'>Examples</h2>",
        "<p>Green: ground-truth boxes. Colour: the map (jet, red = high). White outline: the kept top-r region.</p>",
        examples_html,
    ]
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
           f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return write_text(out, doc)
