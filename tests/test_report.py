"""The HTML report: self-contained, escaped, carries the headline numbers, and renders in headless Chromium."""
import os
import re

import numpy as np
import pytest
from PIL import Image

from roi_consistency.errors import UserError
from roi_consistency.outputs import report, screenshot

RATIOS = ("0.01", "0.05", "0.1", "0.2", "0.5")
HEADINGS = ("Headline numbers", "Per-class AUROC", "Faithfulness vs keep ratio", "Deletion and insertion curves",
            "Localisation", "Sanity: the randomisation check", "Calibration and operating points", "Examples")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _metrics(localisation=True):
    classes = ["Mass", "Nodule <b>", "Hernia"]  # Hernia: AUROC undefined everywhere
    faith = {name: {"comprehensiveness": {k: base * float(k) ** 0.3 for k in RATIOS},
                    "sufficiency": {k: 0.3 - base * float(k) for k in RATIOS}}
             for name, base in (("learned", 0.41234), ("gradcam", 0.3), ("random", 0.05))}
    road = {name: {"morf": {k: base * float(k) ** 0.5 for k in RATIOS},
                   "lerf": {k: 0.4 - base * float(k) for k in RATIOS}}
            for name, base in (("learned", 0.31234), ("gradcam", 0.2), ("random", 0.04))}
    unc = {"n_resamples": 1000, "seed": 0, "level": 0.95, "mean_auroc_full": [0.8411, 0.8833],
           "maps": {name: {"comprehensiveness": {"mean": faith[name]["comprehensiveness"]["0.1"],
                                                 "ci95": [faith[name]["comprehensiveness"]["0.1"] - 0.04, 0.4567]},
                           "pointing_game": {"mean": pg, "ci95": [pg - 0.1, min(1.0, pg + 0.1)]}}
                    for name, pg in (("learned", 0.714), ("gradcam", 0.571), ("random", 0.143))},
           "learned_vs_gradcam": {"comprehensiveness": {"difference": 0.0612, "ci95": [0.0312, 0.0911], "p": 0.002}}}
    loc = {"n_boxes": 7, **{name: {"pointing_game": pg, "iobb_acc": {"0.1": 0.8, "0.25": 0.6, "0.5": 0.3},
                                   "pointing_by_class": {"Mass": pg, "Nodule <b>": pg / 2}}
                            for name, pg in (("learned", 0.714), ("gradcam", 0.571), ("random", 0.143))}}
    box_control = {"Mass": {"n": 4, "p_full": 0.9, "p_drop_box": 0.0421, "p_crop_box": 0.8, "box_area": 0.05},
                   "Nodule <b>": {"n": 3, "p_full": 0.2, "p_drop_box": 0.19, "p_crop_box": 0.2, "box_area": 0.01}}
    leak = {k: {"mean_auroc": v} for k, v in (("learned", 0.871), ("random", 0.5))}
    boxed = {"n_images": 6, **{k: {"mean_auroc": v} for k, v in (("learned", 0.8), ("random", 0.5),
                                                                   ("boxes", 0.9234))}}
    return {"n_images": 40, "classes": classes, "keep_ratio": 0.1, "checkpoint": "runs/x/<best>.pt",
            "fill": "ImageNet mean",
            "maps": ["learned", "gradcam", "random"],
            "auroc": {"full": {"Mass": 0.9123, "Nodule <b>": 0.8123, "Hernia": None},
                      **{k: {m: {"Mass": v, "Nodule <b>": v - 0.1, "Hernia": None} for m in ("learned", "gradcam",
                                                                                           "random")}
                         for k, v in (("crop", 0.8), ("drop", 0.6))}},
            "mean_auroc": {"full": 0.8623, "crop": {"learned": 0.75, "gradcam": 0.7, "random": 0.5},
                           "drop": {"learned": 0.5512, "gradcam": 0.6, "random": 0.8}},
            "kept_fraction": {"learned": 0.1, "gradcam": 0.1, "random": 0.1},
            "faithfulness": faith, "road": road, "uncertainty": unc, "localisation": loc if localisation else None,
            "box_control": box_control if localisation else None,
            "localisation_by_size": {"cut_points": [0.0123, 0.0456], "n": {"small": 3, "medium": 2, "large": 2},
                                     **{k: {t: {"pointing_game": 0.3333 if t == "small" else 1.0, "iobb_acc_0.1": 0.5}
                                            for t in ("small", "medium", "large")} for k in ("learned", "gradcam")}}
            if localisation else None, "leakage": leak,
            "leakage_boxed": boxed if localisation else None, "curves": _curves(),
            "sanity": {"frozen_head": _sanity(), "retrained_head": _retrained() if localisation else None},
            "calibration": _calibration(thresholds=localisation),
            "environment": {"trained": {"device": "cuda", "name": "GPU <x>", "processes": 2, "threads": 8,
                                        "torch": "2.11.0"} if localisation else None,
                            "evaluated": {"device": "cpu", "name": "Some CPU", "features": ["AVX2"], "processes": 1,
                                          "threads": 2, "torch": "2.14.1"}}}


def _curves():
    x = [0.0] + [float(r) for r in np.geomspace(0.005, 1, 20)]
    one = {name: {"deletion": {"curve": [0.9 * (1 - r) ** k for r in x], "auc": 0.9 / (k + 1),
                               "auc_ci95": [0.9 / (k + 1) - 0.02, 0.9 / (k + 1) + 0.02]},
                  "insertion": {"curve": [0.1 + 0.8 * r ** (1 / k) for r in x], "auc": 0.1 + 0.8 * k / (k + 1),
                                "auc_ci95": None}}
           for name, k in (("learned", 4.0), ("gradcam", 3.0), ("random", 1.0))}
    return {"ratios": x, "n_images": 30, "n_pairs": 36, "curve_images": 30, "images_with_pairs": 34,
            "fill": one, "road": one}


def _sanity():
    def m(med, ok):
        return {"median": med, "median_ci95": [[v - 0.05, v + 0.05] for v in med], "median_abs": [abs(v) for v in med],
                "quartiles": [[v - 0.1, v + 0.1] for v in med], "constant_share": [0.0] * 5, "pass": ok}
    maps = {"learned": m([0.6, 0.3, 0.1234, 0.05, 0.01], True), "gradcam": m([0.2, 0.1, 0.05, 0.0, 0.0], True),
            "edges": m([1.0, 1.0, 0.9876, 1.0, 1.0], False)}
    return {"stages": ["fc", "layer4", "layer3", "layer2", "layer1"], "judged_at": 3, "n_pairs": 12,
            "pass_below": 0.2, "randomised": "top <i>stages</i>", "maps": maps}


def _retrained():
    med = [0.41, 0.29, 0.2468]
    stats = {"median": med, "median_ci95": [[v - 0.05, v + 0.05] for v in med], "median_abs": med,
             "quartiles": [[v - 0.1, v + 0.1] for v in med], "constant_share": [0.0] * 3}
    return {"stages": ["fc", "layer4", "layer3"], "judged_at": 3, "n_pairs": 12, "pass_below": 0.2,
            "ceiling": {"median": 0.7531, "median_ci95": [0.7, 0.8], "median_abs": 0.7531, "quartiles": [0.6, 0.8]},
            "learned": stats, "pass": False, "retrained": "the mask stage", "cost_s": 321.0, "mask_epochs": 1}


def _calibration(thresholds=True):
    per = {"Mass": {"ece": 0.0412, "ece_ci95": [0.03, 0.06], "n_pos": 5},
           "Nodule <b>": {"ece": 0.02, "ece_ci95": [0.01, 0.03], "n_pos": 3}, "Hernia": {"ece": 0.001,
                                                                                         "ece_ci95": None, "n_pos": 0}}
    if thresholds:
        per["Mass"].update(threshold=0.3131, sensitivity=0.8, sensitivity_ci95=[0.5, 1.0], specificity=0.9143,
                           specificity_ci95=[0.8, 1.0], n_neg=35)
    rel = {"count": [20, 0, 5] + [1] * 12, "confidence": [0.02, None, 0.15] + [0.5] * 12,
           "frequency": [0.0, None, 0.2] + [0.4] * 12, "ece": 0.033}
    return {"bins": 15, "mean_ece": 0.0211, "reliability": rel, "per_class": per,
            "thresholds": {"rule": "youden", "csv": "val.csv", "n_images": 50} if thresholds else None}


def _roc():
    fpr = np.linspace(0, 1, 11)
    return {"Mass": {"fpr": fpr.tolist(), "tpr": np.sqrt(fpr).tolist(), "auc": 0.9123},
            "Nodule <b>": {"fpr": fpr.tolist(), "tpr": (fpr ** 0.7).tolist(), "auc": 0.8123}}


def _examples(boxes=True):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    gray = (0.5 + 0.3 * np.sin(xx / 6.0) * np.cos(yy / 9.0)).astype(np.float32)

    def one_map(cy, cx):
        heat = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 120.0)
        return {"map": heat, "mask": heat >= np.quantile(heat, 0.9)}

    rand = rng.random((64, 64))
    maps = {"learned": one_map(20, 24), "gradcam": one_map(30, 30),
            "random": {"map": rand, "mask": rand >= np.quantile(rand, 0.9)}}
    ex1 = {"image": "00000003_000.png", "labels": ["Mass"], "gray": gray,
           "boxes": [("Mass", 14, 10, 20, 18)] if boxes else [], "maps": maps,
           "probs": {"full": {"Mass": 0.91}, "crop": {"Mass": 0.72}, "drop": {"Mass": 0.33}}}
    ex2 = {"image": "evil<script>.png", "labels": ["Nodule <b>"], "gray": gray[::-1].copy(), "boxes": [],
           "maps": {k: v for k, v in maps.items() if k != "gradcam"},
           "probs": {"full": {"Nodule <b>": 0.4}, "drop": {}}}  # crop missing on purpose
    return [ex1, ex2]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    full = report.write_report(d / "full" / "report.html", _metrics(), _roc(), _examples())
    bare = report.write_report(d / "bare.html", _metrics(localisation=False), _roc(), _examples(boxes=False),
                               title="No boxes")
    return full, bare


def test_report_is_self_contained_and_escaped(reports):
    full, bare = reports
    assert full.is_file() and bare.is_file()
    assert not list(full.parent.glob("*.tmp")), "temporary file left behind"
    text = full.read_text(encoding="utf-8")
    assert "data:image/png;base64," in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", text, re.I)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "0.862" in text and "0.551" in text  # mean AUROC, full, and drop for the learned map
    assert f"{0.41234 * 0.1 ** 0.3:.3f}" in text  # learned comprehensiveness at r = 0.1
    assert "0.714" in text  # pointing game, learned
    assert "p, box removed" in text and "0.042" in text  # the true box as the region, per finding
    assert "on the 6 boxed images" in text and "0.923" in text  # leakage with the boxes as reference
    assert "Nodule &lt;b&gt;" in text and "Nodule <b>" not in text
    assert "evil&lt;script&gt;.png" in text
    assert "runs/x/&lt;best&gt;.pt" in text
    assert "Hernia" in text.split("Left out", 1)[1].split("</p>", 1)[0]  # all-null class is listed as left out
    # intervals, ROC, faithfulness with the fill and ROAD, curves, sanity, reliability, 2 examples
    assert text.count("<img ") == 1 + 1 + 2 + 1 + 1 + 1 + 2
    assert "0.180 <span" in text and "36 (image, finding) pairs" in text and "of the 34 with" in text  # curves
    assert "0.123" in text and "<b>fail</b>" in text  # sanity: learned's third median, the edge map fails
    assert "once the top 3 stages are random (after + layer3" in text and "+ layer1</th>" in text
    assert "<b>fail</b> (median |ρ| 0.99)" in text  # the verdict is read at the third step, not the last
    assert "Randomised: top &lt;i&gt;stages&lt;/i&gt;." in text
    assert "The head retrained" in text and "0.75" in text and "0.25" in text and "321 s" in text  # and its ceiling
    # the verdicts in the headline, the fair one first; in the section, the retrained head's cascade first
    summary = ("(the fair check) the learned map <b>fails</b> (median ρ 0.25); with its head frozen the learned map "
               "passes (median ρ 0.12); Grad-CAM passes (median ρ 0.05)")
    assert text.index(summary) < text.index("id='auroc'") and text.count(summary) == 2
    assert text.index("id='sanity'") < text.index("The head retrained") < text.index("The head frozen")
    assert "0.313" in text and "0.914" in text and "0.041" in text and "youden, chosen on val.csv" in text
    assert "By lesion size" in text and "1.23 % and 4.56 %" in text and "small (3 boxes)" in text and "0.333 /" in text
    assert "[0.841, 0.883]" in text and "[0.457" not in text and "0.4567]" not in text and ", 0.457]" in text
    assert "+0.061" in text and "[0.031, 0.091]" in text and "p = 0.002" in text  # learned vs Grad-CAM, paired
    assert f"{0.31234 * 0.1 ** 0.5:.3f}" in text and "ROAD MoRF@0.1" in text  # learned ROAD MoRF at r = 0.1
    assert ("Trained on GPU &lt;x&gt; (2 processes, 8 threads, torch 2.11.0) · evaluated on Some CPU with AVX2 "
            "(2 threads") in text
    assert full.stat().st_size < 1_000_000


def test_report_without_localisation(reports):
    _, bare = reports
    text = bare.read_text(encoding="utf-8")
    assert "No bounding-box file" in text and "IoBB &gt; 0.25" not in text
    assert "<title>No boxes</title>" in text
    assert "has no thresholds" in text and "roi-consistency calibrate" in text
    assert "Trained on (not recorded) · evaluated on Some CPU" in text  # a checkpoint from before it was recorded
    assert "The head frozen" in text and "retrained-head cascade was not run" in text
    assert "the check with the head retrained, the fair one for a learned map, was not run" in text


def _chromium_or_skip():
    exe = screenshot.find_chromium()
    if exe is None:
        if os.environ.get("ROI_REQUIRE_CHROMIUM") == "1":
            pytest.fail("ROI_REQUIRE_CHROMIUM=1 but no chromium / chromium-browser / google-chrome on PATH: "
                        "install Debian's chromium package")
        pytest.skip("no Chromium on PATH (set ROI_REQUIRE_CHROMIUM=1 to make this a failure)")
    return exe


def _render(exe, path):
    """Open `path` in headless Chromium: (console/page errors and network requests, img natural widths, text)."""
    if os.environ.get("ROI_REQUIRE_CHROMIUM") == "1":
        import playwright.sync_api as sync_api  # an ImportError here is the failure CI should see
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    problems = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: r.url.startswith(("http:", "https:")) and problems.append(r.url))
            page.goto(path.resolve().as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            return problems, widths, page.inner_text("body")
        finally:
            browser.close()


@pytest.mark.parametrize("which", [0, 1], ids=["with-boxes", "no-localisation"])
def test_report_renders_in_chromium(reports, which):
    exe = _chromium_or_skip()
    problems, widths, body = _render(exe, reports[which])
    assert not problems, problems
    assert len(widths) == 9 and all(w > 0 for w in widths), widths
    for heading in HEADINGS:
        assert heading in body
    assert "n/a" in body  # the missing crop probability of the second example


def test_render_check_catches_broken_pages(tmp_path):
    """The checks above are not vacuous: a broken image and a console error are seen."""
    exe = _chromium_or_skip()
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="data:image/png;base64,AAAA"><script>console.error("boom")</script>'
                   "</body></html>", encoding="utf-8")
    problems, widths, _ = _render(exe, bad)
    assert widths == [0]
    assert any("boom" in p for p in problems), problems


def test_screenshot(reports, tmp_path):
    _chromium_or_skip()
    png = screenshot.screenshot(reports[0], tmp_path / "shot.png", width=900, height=1400)
    assert png.stat().st_size > 0
    with Image.open(png) as im:
        assert im.size[0] == 900


def test_screenshot_of_a_section_starts_there(reports, tmp_path):
    _chromium_or_skip()
    top = screenshot.screenshot(reports[0], tmp_path / "top.png", width=900, height=500)
    ex = screenshot.screenshot(reports[0], tmp_path / "ex.png", width=900, height=500, section="examples")
    with Image.open(top) as a, Image.open(ex) as b:
        a, b = np.asarray(a.convert("L"), np.int16), np.asarray(b.convert("L"), np.int16)
    assert a.shape == b.shape and np.abs(a - b).mean() > 5
    assert b.std() > 20  # the examples' images are there, not a blank page
    with pytest.raises(UserError, match="no section"):
        screenshot.screenshot(reports[1], tmp_path / "none.png", section="nowhere")


def test_screenshot_without_chromium(reports, tmp_path, monkeypatch):
    monkeypatch.setattr(screenshot.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="chromium"):
        screenshot.screenshot(reports[0], tmp_path / "shot.png")
