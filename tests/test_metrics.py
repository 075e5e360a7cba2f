import numpy as np
import pytest

from roi_consistency.evaluation import metrics as M


def test_auroc_with_one_class_column_is_null_and_left_out_of_mean():
    y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    s = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.4], [0.6, 0.2, 0.1], [0.4, 0.5, 0.3]])
    auc = M.per_class_auroc(y, s, ["a", "b", "c"])
    assert auc["a"] == 1.0  # positives 0.9, 0.6 above negatives 0.2, 0.4
    assert auc["b"] is None  # all negative
    assert auc["c"] == 1.0  # positives 0.4, 0.3 above negatives 0.2, 0.1
    assert M.mean_auroc(auc) == pytest.approx((1.0 + auc["c"]) / 2)


def test_auroc_hand_value():
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.8], [0.7], [0.6], [0.1]])
    # pairs (pos, neg): (0.8,0.7) (0.8,0.1) (0.6,0.7)x (0.6,0.1) -> 3 of 4
    assert M.per_class_auroc(y, s, ["x"])["x"] == pytest.approx(0.75)


def test_comprehensiveness_and_sufficiency_over_true_pairs_only():
    y = np.array([[1, 0], [0, 1]])
    p_full = np.array([[0.9, 0.8], [0.3, 0.6]])
    p_drop = np.array([[0.4, 0.0], [0.0, 0.5]])
    p_crop = np.array([[0.7, 0.1], [0.2, 0.6]])
    assert M.comprehensiveness(p_full, p_drop, y) == pytest.approx(((0.9 - 0.4) + (0.6 - 0.5)) / 2)
    assert M.sufficiency(p_full, p_crop, y) == pytest.approx(((0.9 - 0.7) + 0.0) / 2)
    assert M.comprehensiveness(p_full, p_drop, np.zeros((2, 2))) is None


def test_pointing_game_argmax_and_tie_centroid():
    s = np.zeros((10, 10))
    s[2, 7] = 1.0
    assert M.pointing_hit(s, (6, 1, 3, 3))  # x 6..9, y 1..4 holds (row 2, col 7)
    assert not M.pointing_hit(s, (0, 0, 5, 5))
    flat = np.ones((10, 10))  # saturated: every pixel tied -> centroid (5, 5), not index 0
    assert not M.pointing_hit(flat, (0, 0, 2, 2))
    assert M.pointing_hit(flat, (4, 4, 2, 2))
    two = np.zeros((10, 10))
    two[0, 0] = two[9, 9] = 1.0  # two tied corners -> centroid in the middle
    assert not M.pointing_hit(two, (0, 0, 1, 1))


def test_iobb_with_scaled_box():
    from roi_consistency.data.boxes import scale_box
    region = np.zeros((8, 8), bool)
    region[0:4, 0:4] = True  # 16 pixels
    box = scale_box((0, 0, 64, 32), (256, 256), 8)  # a 256-px PNG box -> (0, 0, 2, 1) at 8 px
    assert box == (0, 0, 2, 1)
    assert M.iobb(region, box) == pytest.approx(2 / 16)
    assert M.iobb(region, scale_box((0, 0, 128, 128), (256, 256), 8)) == pytest.approx(1.0)
    assert M.iobb(np.zeros((8, 8), bool), box) == 0.0
    # non-square source: x and y scale separately
    assert scale_box((100, 50, 10, 20), (200, 100), 50) == (25.0, 25.0, 2.5, 10.0)


def test_mask_leakage_detects_a_mask_that_encodes_the_label():
    rng = np.random.default_rng(0)
    y = (rng.random((120, 2)) > 0.5).astype(float)
    y[:, 1] = 0  # a class with one label value: None
    noise = rng.random((120, 16))
    leaky = noise.copy()
    leaky[:, 0] = y[:, 0]  # one mask cell switches on exactly for the positives
    assert M.mask_leakage(leaky, y, ["a", "b"])["per_class"]["a"] > 0.95
    honest = M.mask_leakage(noise, y, ["a", "b"])
    assert honest["per_class"]["b"] is None and abs(honest["mean_auroc"] - 0.5) < 0.2


def test_bootstrap_intervals_resample_images_and_are_seeded():
    rng = np.random.default_rng(0)
    counts = M.resample_counts(60, n=500, seed=1)
    assert counts.shape == (500, 60) and (counts.sum(1) == 60).all()
    assert np.array_equal(counts, M.resample_counts(60, n=500, seed=1))
    img = rng.integers(0, 60, 200)
    assert M.mean_ci(np.full(200, 0.25), img, counts)["ci95"] == pytest.approx([0.25, 0.25])  # a point
    v = rng.random(200)
    ci = M.mean_ci(v, img, counts)
    assert ci["ci95"][0] < v.mean() < ci["ci95"][1] and ci["ci95"][1] - ci["ci95"][0] > 0.05
    same_image = M.mean_ci(np.repeat(v[:60], 4), np.repeat(np.arange(60), 4), counts)  # 4 units per image
    once = M.mean_ci(v[:60], np.arange(60), counts)
    assert same_image["ci95"] == pytest.approx(once["ci95"])  # units of one image move together: no extra certainty
    shifted = M.paired_test(v + 0.1, v, img, counts)
    assert shifted["difference"] == pytest.approx(0.1) and shifted["p"] == 0.0
    noise = M.paired_test(v + rng.normal(0, 0.2, 200) * rng.choice([-1, 1], 200), v, img, counts)
    assert noise["p"] > 0.05 and noise["ci95"][0] < 0 < noise["ci95"][1]


def test_the_resampled_auroc_is_sklearns_weighted_auroc():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(2)
    y = rng.random((80, 3)) < 0.3
    p = np.round(y * 0.4 + rng.random((80, 3)), 1)  # rounded: many ties
    counts = M.resample_counts(80, n=20, seed=0)
    got = M._resampled_auroc(y[:, 1], p[:, 1], counts)
    for w, a in zip(counts, got):
        assert a == pytest.approx(roc_auc_score(y[w > 0, 1], p[w > 0, 1], sample_weight=w[w > 0]))
    lo, hi = M.mean_auroc_ci(y.astype(float), p, M.resample_counts(80, seed=0))
    assert lo < M.mean_auroc(M.per_class_auroc(y, p, ["a", "b", "c"])) < hi


def test_every_per_class_figure_leaves_unknown_labels_out():
    """A NaN label is unknown: each figure equals the same figure over the images whose label is known, and
    would differ if the unknowns were read as negatives (their scores are the highest)."""
    rng = np.random.default_rng(0)
    y = (rng.random((60, 2)) < 0.4).astype(np.float64)
    s = np.clip(y * 0.3 + rng.random((60, 2)) * 0.7, 0, 1)
    y[::5, 0], s[::5, 0] = np.nan, 0.99
    k = ~np.isnan(y[:, 0])
    counts = M.resample_counts(60, n=200, seed=1)
    auc = M.per_class_auroc(y, s, ["a", "b"])
    assert auc["a"] == M.per_class_auroc(y[k], s[k], ["a", "b"])["a"]
    assert auc["a"] != M.per_class_auroc(np.nan_to_num(y), s, ["a", "b"])["a"]
    assert M.choose_thresholds(y, s, ["a", "b"])["a"] == M.choose_thresholds(y[k], s[k], ["a", "b"])["a"]
    assert M.calibration_bins(y[:, 0], s[:, 0]) == M.calibration_bins(y[k, 0], s[k, 0])
    assert M.resampled_ece(y[:, 0], s[:, 0], counts) == M.resampled_ece(y[k, 0], s[k, 0], counts[:, k])
    point = M.operating_point(y[:, 0], s[:, 0], 0.5, counts)
    assert point["n_pos"] + point["n_neg"] == k.sum()
    assert M.roc_curves(y, s, ["a", "b"], auc)["a"]["fpr"] == M.roc_curves(y[k], s[k], ["a", "b"], auc)["a"]["fpr"]
    lo, hi = M.mean_auroc_ci(y, s, counts)
    assert lo <= M.mean_auroc(auc) <= hi
    leak = M.mask_leakage(s, y, ["a", "b"])["per_class"]["a"]
    assert leak == M.mask_leakage(s[k], y[k], ["a", "b"])["per_class"]["a"]


def test_pointing_share_and_iou_against_a_mask():
    truth = np.zeros((6, 6), bool)
    truth[1:3, 1:4] = True  # 6 pixels
    s = np.zeros((6, 6))
    s[2, 3] = 1.0
    assert M.pointing_in(s, truth) and not M.pointing_in(np.roll(s, 2, axis=0), truth)
    plateau = np.zeros((6, 6))
    plateau[0:5, 2] = 1.0  # centroid at row 2: inside
    assert M.pointing_in(plateau, truth)
    region = np.zeros((6, 6), bool)
    region[2:4, 2:4] = True  # 4 pixels, 2 of them in the mask
    assert M.share_and_iou(region, truth) == (0.5, 2 / 8)
