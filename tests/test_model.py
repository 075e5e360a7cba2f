import pytest
import torch
from torch import nn

from roi_consistency.errors import UserError
from roi_consistency.model.backbones import build_backbone
from roi_consistency.model.mask_nets import MaskNet
from roi_consistency.model.masks import straight_through, topk_mask
from roi_consistency.model.network import ROIModel
from roi_consistency.model.trained import read_weights
from roi_consistency.training.joint import joint_outputs
from roi_consistency.training.losses import joint_loss, mask_loss


def joint(model, x, mode="full"):
    """The reference's forward on images in [0, 1]: (full, crop, drop, soft, mask)."""
    return joint_outputs(model, model.normalize(x), mode)


@pytest.mark.parametrize("keep", [0.1, 0.05, 0.5])
def test_topk_keeps_exactly_k_even_with_ties(keep):
    h = w = 20
    k = round(keep * h * w)
    logits = torch.randn(4, 1, h, w)
    logits[1] = 7.0  # all tied: a saturated mask
    logits[2, :, :10] = 50.0  # half tied at the top
    logits[3] = torch.randint(0, 3, (1, h, w)).float()  # three-level ties
    m = topk_mask(logits, keep)
    assert m.shape == logits.shape
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert m.sum(dim=(1, 2, 3)).tolist() == [k] * 4
    # the kept pixels of image 0 are its k largest logits
    assert logits[0][m[0].bool()].min() >= logits[0][~m[0].bool()].max()


def test_straight_through_value_is_hard_and_gradient_reaches_soft():
    soft = torch.rand(1, 1, 4, 4, requires_grad=True)
    hard = topk_mask(soft.detach(), 0.25)
    m = straight_through(hard, soft)
    assert torch.equal(m.detach(), hard)
    (m * torch.arange(16.0).view(1, 1, 4, 4)).sum().backward()
    assert torch.equal(soft.grad, torch.arange(16.0).view(1, 1, 4, 4))


class Brightness(nn.Module):
    """A transparent backbone: logits fall as mean intensity rises, so removing bright pixels raises
    p_drop above p_full and the drop term is active."""

    def __init__(self, n=3):
        super().__init__()
        self.fc = nn.Linear(3, n)
        nn.init.constant_(self.fc.weight, -2.0)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("term", ["alpha", "beta"])
def test_consistency_and_drop_terms_reach_the_mask_network(term):
    torch.manual_seed(0)
    model = ROIModel(Brightness(), MaskNet(), keep_ratio=0.2).train()
    x = torch.rand(2, 1, 16, 16) * 0.5 + 0.5
    weights = {"alpha": 0.0, "beta": 0.0, "gamma": 0.0, "delta": 0.0, term: 1.0}
    full, crop, drop, soft, _ = joint(model, x)
    loss, terms = joint_loss(full, crop, drop, soft, torch.zeros(2, 3), weights)
    assert terms["consist" if term == "alpha" else "drop"] > 0
    (loss - terms["bce"]).backward()  # only the chosen term
    grads = [p.grad for p in model.mask_net.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_fused_and_separate_passes_agree_for_layernorm_backbone():
    torch.manual_seed(0)
    backbone = build_backbone("convnext_tiny", 14, drop_path=0.0)
    model = ROIModel(backbone, MaskNet()).train()
    assert model.fused  # no BatchNorm: one call on [full; crop; drop]
    x = torch.rand(2, 1, 32, 32)
    a = joint(model, x)
    model.fused = False
    b = joint(model, x)
    for u, v in zip(a[:3], b[:3]):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)


def test_batchnorm_backbone_trains_with_separate_passes():
    assert not ROIModel(build_backbone("resnet18", 14), MaskNet()).fused


def test_backbone_head_and_errors(tmp_path):
    m = build_backbone("resnet18", 14)
    assert m.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 14)
    with pytest.raises(UserError, match="not a torchvision"):
        build_backbone("resnet_nonexistent", 14)
    # local weights: an ImageNet-shaped state dict loads (its 1000-class head is skipped)
    import torchvision
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pt")
    m = build_backbone("resnet18", 14, weights=read_weights(str(tmp_path / "r18.pt")).backbone)
    torch.testing.assert_close(m.conv1.weight, ref.conv1.weight)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserError, match="--weights other.pt: only .* tensors match"):
        build_backbone("resnet18", 14, weights=read_weights(str(tmp_path / "other.pt")).backbone,
                       weights_name="--weights other.pt")


def test_pretrained_without_network_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: the weights must be fetched
    import torchvision

    def offline(*a, **k):
        raise OSError("[Errno -2] Name or service not known")
    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(UserError, match=r"ResNet18_Weights.*--weights.*--no-pretrained"):
        build_backbone("resnet18", 14, download=True)


class RegionReader(nn.Module):
    """A frozen 'classifier' whose evidence is one square: logit = 10 * mean(region) - 2."""

    def forward(self, x):
        return (10 * x[:, :, 4:12, 20:28].mean(dim=(1, 2, 3)) - 2).unsqueeze(1)


def test_a_few_steps_move_the_reference_mask_onto_the_region_that_holds_the_signal():
    torch.manual_seed(0)
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[4:12, 20:28] = True  # 64 pixels = keep ratio 1/16
    x = torch.rand(16, 1, 32, 32) * 0.3 + 0.35
    x[:, :, 4:12, 20:28] += 0.4  # the signal: the region is brighter in every (positive) image
    model = ROIModel(RegionReader(), MaskNet(), keep_ratio=64 / 1024).train()
    model.fused = True
    model.backbone.requires_grad_(False)
    opt = torch.optim.Adam(model.mask_net.parameters(), lr=1e-2)
    w = {"alpha": 1.0, "beta": 0.5, "gamma": 0.0, "delta": 0.0}

    def inside() -> float:
        with torch.no_grad():
            m = joint(model, x)[4][:, 0].bool()
        return (m & region).sum().item() / m.sum().item()

    before = inside()
    for _ in range(60):
        full, crop, drop, soft, _ = joint(model, x)
        loss, _ = joint_loss(full, crop, drop, soft, torch.ones(16, 1), w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert inside() > max(0.6, before + 0.3)


def test_the_methods_head_reads_the_backbone_without_copying_it():
    from roi_consistency.model.config import MethodConfig, ModelConfig
    from roi_consistency.model.mask_nets import features_grad
    from roi_consistency.model.network import build_model
    from roi_consistency.training.mask import mask_outputs
    model = build_model(ModelConfig(backbone="resnet18", pretrained=False), MethodConfig(), 14).eval()
    model.backbone.requires_grad_(False)
    full, crop, drop, soft, m, cls = mask_outputs(model, model.normalize(torch.rand(2, 1, 64, 64)), 0.1, None)
    assert soft.shape == (2, 1, 64, 64) and cls.tolist() == full.argmax(1).tolist()
    assert m.sum(dim=(1, 2, 3)).tolist() == [round(0.1 * 64 * 64)] * 2
    assert not [k for k in model.mask_net.state_dict() if "layer" in k or "conv1" in k]
    # gradients reach the mask head, never the backbone through the feature path
    soft.sum().backward()
    assert model.mask_net.proj[0].weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad is None
    with pytest.raises(UserError, match="ResNet and ConvNeXt"):
        features_grad(Brightness(), 3)  # no recognisable feature stages


def twin_backbones(n_classes: int):
    """Two identical resnet18s: one inside the model, one to replay only the full image through."""
    torch.manual_seed(0)
    backbone, reference = build_backbone("resnet18", n_classes), build_backbone("resnet18", n_classes)
    reference.load_state_dict(backbone.state_dict())
    return backbone, reference


def test_crop_and_drop_passes_leave_batchnorm_running_stats_to_full_images():
    backbone, reference = twin_backbones(14)
    model = ROIModel(backbone, MaskNet()).train()
    x = torch.rand(4, 1, 32, 32)
    joint(model, x)
    reference.train()(model.normalize(x))  # the full image alone
    torch.testing.assert_close(backbone.bn1.running_mean, reference.bn1.running_mean)
    torch.testing.assert_close(backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert backbone.bn1.momentum == 0.1  # restored


class TwoRegionReader(nn.Module):
    """A frozen two-class 'classifier': class 0's evidence is square A, class 1's is square B. Its
    'feature maps' (what the features mask net reads) are the image plus pixel coordinates."""
    A, B = (slice(4, 12), slice(4, 12)), (slice(20, 28), slice(20, 28))

    def __init__(self):
        super().__init__()
        self.layer1, self.layer2, self.layer3, self.layer4 = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, x):
        b, _, h, w = x.shape
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        f = torch.cat([x[:, :1], yy.expand(b, 1, h, w), xx.expand(b, 1, h, w)], 1)
        self.layer4(self.layer3(self.layer2(self.layer1(f))))
        return torch.stack([10 * x[:, :, self.A[0], self.A[1]].mean(dim=(1, 2, 3)) - 2,
                            10 * x[:, :, self.B[0], self.B[1]].mean(dim=(1, 2, 3)) - 2], 1)


def test_per_class_head_moves_each_class_mask_onto_its_own_evidence():
    from roi_consistency.model.mask_nets import features_grad
    from roi_consistency.training.mask import class_pairs, mask_outputs
    torch.manual_seed(0)
    n = 24
    y = torch.zeros(n, 2)
    y[: n // 3, 0] = 1
    y[n // 3: 2 * n // 3, 1] = 1
    y[2 * n // 3:] = 1  # both findings: only the class decides which square the mask should keep
    x = torch.rand(n, 1, 32, 32) * 0.3 + 0.35
    A, B = TwoRegionReader.A, TwoRegionReader.B
    x[:, :, A[0], A[1]] += 0.4 * y[:, 0].view(-1, 1, 1, 1)
    x[:, :, B[0], B[1]] += 0.4 * y[:, 1].view(-1, 1, 1, 1)
    backbone = TwoRegionReader()
    model = ROIModel(backbone, features_grad(backbone, 2), keep_ratio=64 / 1024).eval()
    opt = torch.optim.Adam(model.mask_net.parameters(), lr=1e-2)
    w = {"alpha": 1.0, "beta": 2.0, "gamma": 0.0, "delta": 0.0}
    xn = model.normalize(x)

    def share_inside(cls: int, square) -> float:
        """Share of class `cls`'s mask inside `square`, on the images that have both findings."""
        m = mask_outputs(model, xn[2 * n // 3:], model.keep_ratio, torch.full((n - 2 * n // 3,), cls))[4]
        m = m[:, 0].bool()
        return m[:, square[0], square[1]].sum().item() / m.sum().item()

    rows, cls = class_pairs(y)
    for _ in range(80):
        full, crop, drop, soft, _, explained = mask_outputs(model, xn[rows], model.keep_ratio, cls)
        loss, _ = mask_loss(full, crop, drop, soft, y[rows], torch.nn.functional.one_hot(explained, 2), w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = share_inside(0, A), share_inside(1, B)
    # reading the class's attribution, even the untrained head leans onto the evidence; training finishes
    assert min(after) > 0.95, after
    # with no class given, each image's mask explains its most probable class
    assert model.explain(xn[:4]).cls.tolist() == [0, 0, 0, 0]


def test_evalx_pass_masks_only_the_first_images_and_keeps_bn_stats_for_full_images():
    from roi_consistency.training.classifier import evalx_logits
    backbone, reference = twin_backbones(3)
    model = ROIModel(backbone, MaskNet()).train()
    x = torch.rand(6, 1, 32, 32)
    full, masked = evalx_logits(model, model.normalize(x), 2, 0.25)
    assert full.shape == (6, 3) and masked.shape == (2, 3)
    reference.train()(model.normalize(x))
    torch.testing.assert_close(backbone.bn1.running_mean, reference.bn1.running_mean)
    assert all(p.grad is None for p in model.mask_net.parameters())  # the mask net never ran


def test_mask_stage_outputs_are_the_frozen_classifiers_and_train_only_the_mask():
    from roi_consistency.model.config import MethodConfig, ModelConfig
    from roi_consistency.model.network import build_model
    from roi_consistency.training.mask import mask_outputs
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", pretrained=False), MethodConfig(), 14).eval()
    model.backbone.requires_grad_(False)
    xn = model.normalize(torch.rand(3, 1, 64, 64))
    full, crop, drop, soft, m, cls = mask_outputs(model, xn, 0.1, torch.tensor([2, -1, 5]))
    with torch.no_grad():
        plain = model.backbone(torch.cat([xn, *model.crop_drop(xn, m)])).chunk(3)
    for got, want in zip((full, crop, drop), plain):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert cls.tolist() == [2, int(full[1].argmax()), 5]
    (crop.sum() - drop.sum()).backward()
    assert model.mask_net.proj[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_normal_fill_puts_the_fill_image_where_pixels_are_removed():
    model = ROIModel(Brightness(), MaskNet())
    x = torch.rand(2, 1, 8, 8)
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 2:5, 3:6] = 1
    xn = model.normalize(x)
    crop, drop = model.crop_drop(xn, m)  # the reference: removed pixels are 0 (the ImageNet mean)
    assert torch.equal(crop, xn * m) and torch.equal(drop, xn * (1 - m))
    fill = torch.linspace(0, 1, 64).view(8, 8)
    model.set_fill(fill)
    crop, drop = model.crop_drop(xn, m)
    fn = model.normalize(fill.view(1, 1, 8, 8))
    inside = m.bool().expand_as(xn)
    torch.testing.assert_close(crop[inside], xn[inside])
    torch.testing.assert_close(crop[~inside], fn.expand_as(xn)[~inside])
    torch.testing.assert_close(drop[inside], fn.expand_as(xn)[inside])
    torch.testing.assert_close(drop[~inside], xn[~inside])


def test_class_pairs_pair_each_image_with_each_of_its_findings():
    from roi_consistency.training.mask import class_pairs
    rows, cls = class_pairs(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]))
    assert rows.tolist() == [0, 2, 2] and cls.tolist() == [0, 0, 2]  # the normal image has nothing to explain
    rows, cls = class_pairs(torch.zeros(3, 2))  # a batch of normal images still trains: most probable class
    assert rows.tolist() == [0, 1, 2] and cls.tolist() == [-1, -1, -1]
    # at most `limit` pairs (memory stays bounded), drawn from the real ones
    y = torch.ones(4, 3)
    rows, cls = class_pairs(y, limit=4)
    assert len(rows) == 4 and len({(r, c) for r, c in zip(rows.tolist(), cls.tolist())}) == 4
    assert rows.tolist() == sorted(rows.tolist())
    assert class_pairs(y, limit=12)[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # under the limit: all


def test_class_attribution_is_the_first_order_effect_of_removing_each_pixel():
    from roi_consistency.model.mask_nets import class_attribution
    torch.manual_seed(0)
    w = torch.randn(3, 2, 4, 4)  # a linear classifier: logit_c = sum(w_c * x), so the gradient is w_c

    class Linear(nn.Module):
        def forward(self, x):
            return torch.einsum("bchw,kchw->bk", x, w)

    x, fill = torch.randn(2, 2, 4, 4), torch.randn(1, 2, 4, 4)
    feats, out, explained, a = class_attribution(Linear(), x, (), torch.tensor([2, -1]), fill)
    assert feats == [] and explained.tolist() == [2, int(out[1].argmax())]  # -1: the most probable class
    for b, c in enumerate(explained.tolist()):
        torch.testing.assert_close(a[b, 0], (w[c] * (x[b] - fill[0])).sum(0))
        # removing every pixel (x -> fill) changes the logit by exactly the attribution's sum, negated
        with torch.no_grad():
            drop = torch.einsum("chw,kchw->k", fill[0], w)[c] - out[b, c]
        torch.testing.assert_close(drop, -a[b].sum())
