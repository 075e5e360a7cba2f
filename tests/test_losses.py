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


def test_classifier_stage_adds_weighted_bce_of_the_masked_images():
    from roi_consistency.losses import classifier_stage_loss
    full, masked = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[-1.0]])
    y = torch.tensor([[1.0], [0.0], [1.0]])
    total, terms = classifier_stage_loss({"full": full, "masked": masked}, y, 0.5)
    assert math.isclose(terms["consist"].item(), -math.log(sig(-1.0)), rel_tol=1e-6)  # labels of image 0
    assert math.isclose(total.item(), bce(full, y).item() + 0.5 * terms["consist"].item(), rel_tol=1e-6)


def test_mask_stage_focus_limits_both_terms_to_the_explained_class():
    from roi_consistency.losses import mask_stage_loss
    full = torch.tensor([[2.0, 2.0]])
    crop = torch.tensor([[2.0, -2.0]])  # the crop keeps class 0, loses class 1
    drop = torch.tensor([[-1.0, 3.0]])
    y = torch.tensor([[1.0, 1.0]])
    w = {"alpha": 1.0, "beta": 1.0, "gamma": 0.0, "delta": 0.0}
    out = {"full": full, "crop": crop, "drop": drop}
    _, both = mask_stage_loss(out, y, w)
    _, only0 = mask_stage_loss(out, y, w, torch.tensor([[1, 0]]))
    assert math.isclose(both["consist"].item(), (sig(2) - sig(-2)) / 2, rel_tol=1e-6)
    assert math.isclose(both["drop"].item(), (sig(-1) + sig(3)) / 2, rel_tol=1e-6)
    assert only0["consist"].item() == 0.0
    assert math.isclose(only0["drop"].item(), sig(-1), rel_tol=1e-6)


def test_mask_stage_in_bce_space_is_kl_and_log_of_the_drop():
    from roi_consistency.losses import mask_stage_loss
    w = {"alpha": 1.0, "beta": 1.0, "gamma": 0.0, "delta": 0.0}
    full, y = torch.tensor([[3.0, -2.0]]), torch.tensor([[1.0, 0.0]])
    same = {"full": full, "crop": full.clone(), "drop": torch.tensor([[3.0, -5.0]])}
    _, t = mask_stage_loss(same, y, w, space="bce")
    assert abs(t["consist"].item()) < 1e-6  # KL is zero when the crop keeps p_full exactly
    assert math.isclose(t["drop"].item(), -math.log(1 - sig(3.0)), rel_tol=1e-5)  # true finding only
    # a missed finding (p_drop near 1) gets a far larger gradient than in probability space
    grads = {}
    for space in ("prob", "bce"):
        drop = torch.tensor([[5.0, -5.0]], requires_grad=True)
        loss, _ = mask_stage_loss({"full": full, "crop": full.clone(), "drop": drop}, y, w, space=space)
        loss.backward()
        grads[space] = drop.grad[0, 0].item()
    assert grads["bce"] > 50 * grads["prob"] > 0


def test_mask_stage_in_odds_space_scores_removal_relative_to_the_full_image():
    from roi_consistency.losses import mask_stage_loss
    w = {"alpha": 0.0, "beta": 1.0, "gamma": 0.0, "delta": 0.0}
    # two true findings, a faint one (p_full 0.27) and an obvious one (0.99); the mask removed neither
    full, y = torch.tensor([[-1.0, 4.6]]), torch.tensor([[1.0, 1.0]])
    _, t = mask_stage_loss({"full": full, "crop": full.clone(), "drop": full.clone()}, y, w, space="odds")
    assert math.isclose(t["drop"].item(), math.log(2), rel_tol=1e-5)  # log(1 + odds ratio 1)
    grads = {}
    for space in ("bce", "odds"):
        drop = full.clone().requires_grad_(True)
        loss, _ = mask_stage_loss({"full": full, "crop": full.clone(), "drop": drop}, y, w, space=space)
        loss.backward()
        grads[space] = drop.grad[0].tolist()
    faint, obvious = grads["odds"]
    assert math.isclose(faint, obvious, rel_tol=1e-5) and faint > 0  # the same pull whatever p_full
    assert grads["bce"][1] > 3 * grads["bce"][0]  # where -log(1 - p_drop) favours the obvious finding
    # removing the faint finding's evidence (its logit 4 lower) lowers the term as much as for the obvious one
    _, t2 = mask_stage_loss({"full": full, "crop": full.clone(), "drop": full - 4.0}, y, w, space="odds")
    assert math.isclose(t2["drop"].item(), math.log1p(math.exp(-4.0)), rel_tol=1e-5)
