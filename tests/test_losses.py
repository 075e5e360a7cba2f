import math

import torch

from roi_consistency.training.losses import (
    bce,
    classifier_loss,
    consistency,
    drop_penalty,
    joint_loss,
    mask_loss,
    sparsity,
    total_variation,
)

W0 = {"alpha": 1.0, "beta": 1.0, "gamma": 0.0, "delta": 0.0}


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_terms_and_the_joint_objective_match_hand_computation():
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

    w = {"alpha": 1.0, "beta": 0.5, "gamma": 1e-3, "delta": 1e-4}  # the reference's weights
    total, terms = joint_loss(full, crop, drop, soft, y, w)
    want = want_bce + abs(sig(0) - sig(1)) / 2 + 0.5 * (sig(3) - sig(2)) / 2 + 1e-3 * 0.5 + 1e-4 * 1.0
    assert math.isclose(total.item(), want, rel_tol=1e-6)
    assert set(terms) == {"bce", "consist", "drop", "sparse", "tv"}


def test_plain_classifier_is_bce_alone():
    total, terms = joint_loss(torch.zeros(1, 2), None, None, None, torch.ones(1, 2), dict.fromkeys(W0, 1.0))
    assert math.isclose(total.item(), math.log(2), rel_tol=1e-6)
    assert terms["consist"] == 0 and terms["tv"] == 0


def test_classifier_stage_adds_weighted_bce_of_the_masked_images():
    full, masked = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[-1.0]])
    y = torch.tensor([[1.0], [0.0], [1.0]])
    total, terms = classifier_loss(full, masked, y, 0.5)
    assert math.isclose(terms["evalx"].item(), -math.log(sig(-1.0)), rel_tol=1e-6)  # labels of image 0
    assert math.isclose(total.item(), bce(full, y).item() + 0.5 * terms["evalx"].item(), rel_tol=1e-6)
    total, terms = classifier_loss(full, masked[:0], y, 0.5)  # no masked copies in this batch
    assert terms["evalx"] == 0 and math.isclose(total.item(), bce(full, y).item(), rel_tol=1e-6)


def test_mask_stage_focus_limits_both_terms_to_the_explained_class():
    full = torch.tensor([[2.0, 2.0]])
    crop = torch.tensor([[2.0, -2.0]])  # the crop keeps class 0, loses class 1
    drop = torch.tensor([[-1.0, 3.0]])
    y = torch.tensor([[1.0, 1.0]])
    _, both = mask_loss(full, crop, drop, None, y, torch.ones(1, 2), W0)
    _, only0 = mask_loss(full, crop, drop, None, y, torch.tensor([[1, 0]]), W0)
    assert both["consist"] > 0 and abs(only0["consist"].item()) < 1e-6  # class 0's crop keeps p_full exactly
    assert math.isclose(both["drop"].item(), (-math.log(1 - sig(-1)) - math.log(1 - sig(3))) / 2, rel_tol=1e-5)
    assert math.isclose(only0["drop"].item(), -math.log(1 - sig(-1)), rel_tol=1e-5)


def test_mask_stage_is_kl_and_log_of_the_drop_whose_gradient_does_not_fade():
    full, y = torch.tensor([[3.0, -2.0]]), torch.tensor([[1.0, 0.0]])
    focus = torch.ones(1, 2)
    _, t = mask_loss(full, full.clone(), torch.tensor([[3.0, -5.0]]), None, y, focus, W0)
    assert abs(t["consist"].item()) < 1e-6  # KL is zero when the crop keeps p_full exactly
    assert math.isclose(t["drop"].item(), -math.log(1 - sig(3.0)), rel_tol=1e-5)  # true finding only
    # a missed finding (p_drop near 1) pulls far harder than p_drop would (its gradient p(1 - p))
    drop = torch.tensor([[5.0, -5.0]], requires_grad=True)
    loss, _ = mask_loss(full, full.clone(), drop, None, y, focus, W0)
    loss.backward()
    assert drop.grad[0, 0].item() > 50 * sig(5.0) * (1 - sig(5.0)) > 0
    full_c = torch.tensor([[1.0, 1.0]], requires_grad=True)  # p_full is the target, never moved
    assert not mask_loss(full_c, torch.zeros(1, 2), torch.zeros(1, 2), None, y, focus, W0)[0].requires_grad


def test_an_unknown_label_is_left_out_of_the_loss_not_read_as_negative():
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], requires_grad=True)
    y = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), 1.0, 0.0]])
    loss = bce(logits, y)
    known = ~torch.isnan(y)
    assert math.isclose(loss.item(), bce(logits[known][None], y[known][None]).item(), rel_tol=1e-6)
    loss.backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()
    # the mask stage: an unknown finding is not a true one, so nothing asks for its removal
    f = torch.ones(2, 3)
    _, terms = mask_loss(logits.detach(), logits.detach(), logits.detach(), None, y, f, W0)
    assert all(torch.isfinite(v) for v in terms.values())
    want_drop = (torch.nn.functional.softplus(logits[0, 0]) + torch.nn.functional.softplus(logits[1, 1])) / 2
    assert math.isclose(terms["drop"].item(), want_drop.item(), rel_tol=1e-6)
