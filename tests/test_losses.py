import math

import torch

from roi_consistency.losses import bce, consistency, drop_penalty, roi_loss, sparsity, total_variation


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_terms_match_hand_computation():
    full = torch.tensor([[0.0, 2.0]])
    crop = torch.tensor([[1.0, 2.0]])
    drop = torch.tensor([[-1.0, 3.0]])
    y = torch.tensor([[1.0, 0.0]])
    p_full, p_crop, p_drop = torch.sigmoid(full), torch.sigmoid(crop), torch.sigmoid(drop)
    want_bce = (-math.log(sig(0.0)) - math.log(1 - sig(2.0))) / 2
    assert math.isclose(bce(full, y).item(), want_bce, rel_tol=1e-6)
    assert math.isclose(consistency(p_full, p_crop).item(), abs(sig(0) - sig(1)) / 2, rel_tol=1e-6)
    # relu(p_drop - p_full): only the second class has p_drop above p_full
    assert math.isclose(drop_penalty(p_full, p_drop).item(), (sig(3) - sig(2)) / 2, rel_tol=1e-6)
    soft = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    assert math.isclose(sparsity(soft).item(), 0.5)
    # horizontal diffs |1-0|, |0.5-0.5| -> mean 0.5; vertical |0.5-0|, |0.5-1| -> mean 0.5
    assert math.isclose(total_variation(soft).item(), 1.0)

    out = {"full": full, "crop": crop, "drop": drop, "soft": soft}
    w = {"alpha": 1.0, "beta": 0.5, "gamma": 1e-3, "delta": 1e-4}
    total, terms = roi_loss(out, y, w)
    want = want_bce + abs(sig(0) - sig(1)) / 2 + 0.5 * (sig(3) - sig(2)) / 2 + 1e-3 * 0.5 + 1e-4 * 1.0
    assert math.isclose(total.item(), want, rel_tol=1e-6)
    assert set(terms) == {"bce", "consist", "drop", "sparse", "tv"}


def test_standard_mode_output_has_only_bce():
    total, terms = roi_loss({"full": torch.zeros(1, 2)}, torch.ones(1, 2),
                            {"alpha": 1.0, "beta": 1.0, "gamma": 1.0, "delta": 1.0})
    assert math.isclose(total.item(), math.log(2), rel_tol=1e-6)
    assert terms["consist"] == 0 and terms["tv"] == 0
