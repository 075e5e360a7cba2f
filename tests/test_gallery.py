"""gallery.html: every test image's cards, sorted, filtered and opened in headless Chromium."""
import json

import numpy as np
import pytest
import torch

from roi_consistency.evaluation.evaluate import evaluate_checkpoint
from roi_consistency.model.trained import load_trained
from roi_consistency.outputs.gallery import Gallery, cards_of
from test_report import BROWSER_ARGS, _chromium_or_skip


def test_cards_are_true_positives_misses_false_positives_and_negatives():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]], float)
    p = np.array([[0.9, 0.1, 0.1], [0.2, 0.8, 0.7], [0.1, 0.3, 0.2], [0.1, 0.1, 0.6]])
    th = {"values": {"a": 0.5, "b": 0.5, "c": 0.5}}
    assert cards_of(list("wxyz"), y, p, ["a", "b", "c"], th) == [
        (0, 0, "TP"), (1, 0, "missed"), (1, 1, "TP"), (1, 2, "FP"), (2, 1, "TN"), (3, 2, "FP")]
    # an unknown label is neither true nor false: called or not, it gets no card, nor the TN card
    y[1, 2] = y[2, 1] = y[3, 2] = np.nan
    assert cards_of(list("wxyz"), y, p, ["a", "b", "c"], th) == [
        (0, 0, "TP"), (1, 0, "missed"), (1, 1, "TP"), (2, 2, "TN"), (3, 0, "TN")]


def test_cards_reuse_the_maps_the_passes_drew_and_draw_only_the_others(trained64, tmp_path):
    model, cfg = load_trained(str(trained64), torch.device("cpu"))
    classes, size = cfg.data.classes, cfg.model.img_size
    asked = []

    class Corner:  # a map peaked at the top-left pixel; records the classes it is asked for
        name, ties = "learned", False

        def __call__(self, pairs):
            asked.append(pairs.cls.tolist())
            m = torch.zeros(len(pairs.cls), 1, size, size)
            m[:, :, 0, 0] = 1
            return m

    y, p = np.zeros((2, len(classes))), np.full((2, len(classes)), 0.01)
    y[0, 0], p[1, 1] = 1, 0.99  # image a: a missed finding with a box; image b: a false positive
    centre = torch.zeros(size, size)
    centre[size // 2, size // 2] = 1  # the passes' map of a's finding: inside its box
    box = (classes[0], size // 2 - 3, size // 2 - 3, 6, 6)
    g = Gallery(tmp_path / "gallery.html", classes, {"values": dict.fromkeys(classes, 0.5)}, 0.1, [Corner()])
    g.add(model, model.normalize(torch.rand(2, 3, size, size)), ["a.png", "b.png"], y, p,
          {"a.png": [box]}, {(0, 0): {"learned": centre}}, {(0, 0): (np.full(len(classes), 0.25),
                                                                      np.full(len(classes), 0.75))})
    assert asked == [[1]]  # only the false positive's map was drawn here
    cards = {(r["image"], r["category"]): r for r in g.records}
    assert cards[("a.png", "missed")]["hit"] is True  # the passes' map, not the corner
    assert (cards[("a.png", "missed")]["p_crop"], cards[("a.png", "missed")]["p_drop"]) == (0.25, 0.75)  # theirs too
    fp = cards[("b.png", "FP")]
    assert 0 <= fp["p_crop"] <= 1 and 0 <= fp["p_drop"] <= 1 and fp["p_crop"] != 0.25  # computed here
    assert cards[("b.png", "FP")]["finding"] == classes[1] and cards[("b.png", "FP")]["hit"] is None
    assert g.finish()["n_cards"] == 2 and len(list((tmp_path / "gallery" / "detail").glob("*.jpg"))) == 2


@pytest.fixture(scope="module")
def gallery(trained64, phantom64, tmp_path_factory):
    out = tmp_path_factory.mktemp("gallery")
    m = evaluate_checkpoint(str(trained64), str(phantom64["test"]), str(phantom64["images"]),
                            bbox=str(phantom64["data"] / "BBox_List_2017.csv"), out_dir=str(out), keep_ratios=(0.1,),
                            road_ratios=(0.1,), curve_images=0, gallery_limit=40, n_examples=1, workers=0,
                            progress=False)
    return out, m


def test_evaluate_writes_the_gallery_and_links_it(gallery):
    out, m = gallery
    g = m["gallery"]
    assert g["n_images"] == 40 and g["n_cards"] >= 40 and g["folder_bytes"] > 0
    assert len(list((out / "gallery" / "thumb").glob("*.jpg"))) == g["n_cards"]
    assert len(list((out / "gallery" / "detail").glob("*.jpg"))) == g["n_cards"]
    assert "href='gallery.html'" in (out / "report.html").read_text()
    assert json.loads((out / "metrics.json").read_text())["gallery"]["n_cards"] == g["n_cards"]


def _order(page):
    return page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.id)")


def test_sorting_filtering_and_the_detail_view_in_chromium(gallery):
    exe = _chromium_or_skip()
    from playwright.sync_api import sync_playwright
    out, m = gallery
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: msg.type == "error" and problems.append(msg.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto((out / "gallery.html").resolve().as_uri(), wait_until="load")
            by_p = _order(page)
            assert len(by_p) == m["gallery"]["n_cards"]
            page.select_option("#sort", "faithfulness")
            assert _order(page) != by_p and sorted(_order(page)) == sorted(by_p)  # same cards, another order
            page.select_option("#finding", "Effusion")
            shown = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.finding)")
            assert shown and set(shown) == {"Effusion"} and len(shown) < len(by_p)
            page.click(".card >> nth=0")
            assert page.is_visible("#detail")
            captions = page.inner_text("#d-captions")
            assert all(k in captions for k in ("learned", "gradcam", "random"))
            page.wait_for_function("document.getElementById('d-img').complete")
            assert page.eval_on_selector("#d-img", "i => i.naturalWidth") == 4 * 48
            assert "p full" in page.inner_text("#d-probs")
            page.click("#close")
            assert not page.is_visible("#detail")
        finally:
            browser.close()
    assert not problems, problems


def test_a_large_test_set_is_shown_a_page_at_a_time(tmp_path):
    from playwright.sync_api import sync_playwright

    from roi_consistency.outputs.gallery import page_html
    exe = _chromium_or_skip()
    recs = [{"id": k, "image": f"{k:08d}_000.png", "p_crop": 0.5, "p_drop": 0.1, "hit": k % 3 == 0,
             "maps": ["learned", "gradcam", "random"], "finding": "Mass" if k % 2 else "Nodule", "category": "TP",
             "labels": ["Mass"], "p_full": k / 1200} for k in range(1200)]
    (tmp_path / "gallery.html").write_text(page_html(recs, ["Mass", "Nodule"]))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto((tmp_path / "gallery.html").as_uri(), wait_until="load")
            assert page.locator(".card").count() == 500 and _order(page)[0] == "1199"  # highest p first
            page.click("#more")
            assert page.locator(".card").count() == 1000
            page.click("#more")
            assert page.locator(".card").count() == 1200 and not page.is_visible("#more")
            page.select_option("#finding", "Nodule")  # a new filter starts at the first page again
            assert page.locator(".card").count() == 500 and "600 of 1200 cards" in page.inner_text("#count")
        finally:
            browser.close()
