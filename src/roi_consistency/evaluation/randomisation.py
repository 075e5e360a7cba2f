"""The randomisation check (Adebayo et al. 2018, "Sanity checks for saliency maps"): does a map depend on
the model? A map that survives the model's weights being replaced by random ones explains the image,
not the model; Arun et al. (2021) found most saliency methods on chest films fail it.

    roi-consistency evaluate ... --sanity

The classifier's stages are re-initialised top-down, cumulatively (the head, then the last stage too,
then the one below, ...), and after each step every map is drawn again on the same (image, finding)
pairs. Each map's Spearman rank correlation with its original, per pair over pixels, should fall
towards 0: the map passes when the median is below PASS_BELOW once the top JUDGED stages are random.
The cascade goes on to the stem, so the steps after the verdict show how far down a map's dependence
on the trained weights reaches (a map can fail at the top and fall to 0 only when the low stages are
random too; EXPERIMENTS.md round 9). The median of |rho| is reported beside it: two unrelated maps of
the same film share some of its anatomy, either way round, so |rho| has a floor above 0 that the
signed median does not. Ties get their average rank, so Grad-CAM's zero plateaus count as one rank;
a map that turns constant correlates with nothing and counts 0.

Two cascades, for the learned map (metrics.json's sanity.frozen_head and sanity.retrained_head):

- the frozen head (`evaluate --sanity`, `frozen_head_check`): the mask head keeps its trained weights and
  reads the randomised classifier's features and gradient. It asks whether the learned map is the
  classifier's evidence or a pattern the head draws whatever the classifier computes; but it is unfair to
  a trained explainer, whose head was never trained for the random classifier;
- the retrained head (the `sanity` command, sanity.py): after each step the mask stage is trained anew
  against the randomised classifier, as Quantus's MPRT calls an explanation method anew on each
  randomised model, and its map is compared with the original; a second mask stage on the intact
  classifier, another seed, gives the noise ceiling.

The edge map (image gradients, no model at all) is the control that must fail.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.stats import rankdata

from roi_consistency.data.dataset import ImageCSVDataset
from roi_consistency.evaluation.explainers import Edges, GradCAM, Learned, Pairs
from roi_consistency.model.network import ROIModel

PASS_BELOW = 0.2  # the median Spearman correlation a map must fall below once the top stages are random
JUDGED = 3  # ... that is, once this many stages, top-down, are random


def cascade_stages(backbone: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The classifier's stages with parameters, top (the head) first; a `features` sequence counts as its
    own stages (ConvNeXt, DenseNet, EfficientNet), ResNet's layers as theirs."""
    stages = []
    for name, child in backbone.named_children():
        parts = child.named_children() if name == "features" else [(None, child)]
        for sub, module in parts:
            if any(True for _ in module.parameters()):
                stages.append((name if sub is None else f"{name}.{sub}", module))
    return stages[::-1]


@torch.no_grad()
def randomise(module: torch.nn.Module, seed: int) -> None:
    """Re-initialise every layer of the module with PyTorch's default initialisation (`reset_parameters`,
    running statistics included), seeded, without touching the caller's random state. A parameter with
    no reset of its own (ConvNeXt's layer scale) keeps its trained value, so a random block still adds
    its output at the trained scale instead of vanishing."""
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


def spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per pair, the rank correlation of two maps [P,1,H,W] over pixels (0 where either is constant)."""
    ra = rankdata(a.flatten(1).float().cpu().numpy(), axis=1)
    rb = rankdata(b.flatten(1).float().cpu().numpy(), axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, 0.0)


def explainers_of(model, mode: str) -> list:
    """The maps the check redraws: the learned one (not for the random-mask control), Grad-CAM, and the
    model-free edge control."""
    return ([] if mode == "random_mask" else [Learned(model)]) + [GradCAM(model), Edges(model)]


def _median_ci(v: np.ndarray, rng: np.random.Generator, n: int = 1000) -> list[float]:
    boot = np.median(v[rng.integers(0, len(v), (n, len(v)))], axis=1)
    return [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def step_stats(per_step: list[np.ndarray], rng: np.random.Generator) -> dict:
    """Per step of a cascade, over the pairs: the median correlation with its 95 % bootstrap interval, the
    median of its absolute value, and the quartiles."""
    return {"median": [float(np.median(v)) for v in per_step], "median_ci95": [_median_ci(v, rng) for v in per_step],
            "median_abs": [float(np.median(np.abs(v))) for v in per_step],
            "quartiles": [[float(q) for q in np.percentile(v, [25, 75])] for v in per_step]}


def draw(explainer, pairs: Pairs, chunk: int) -> torch.Tensor:
    """The explainer's maps of every pair, `chunk` pairs at a time (Grad-CAM and the learned map backpropagate)."""
    return torch.cat([explainer(Pairs(pairs.xn[s:s + chunk], pairs.cls[s:s + chunk], pairs.boxes[s:s + chunk]))
                      .detach().cpu() for s in range(0, len(pairs), chunk)])


def frozen_head_check(model, mode: str, pairs: Pairs, steps: int | None = None, seed: int = 0,
                      chunk: int = 16) -> dict:
    """metrics.json's sanity.frozen_head: the stages randomised (the first `steps`, None: all), and per map at each step
    the median correlation (with its 95 % bootstrap interval over pairs), the median of its absolute value,
    the quartiles and the share of constant maps; and pass or fail once JUDGED stages are random (`judged_at`)."""
    copy_ = copy.deepcopy(model).eval()
    stages = cascade_stages(copy_.backbone)[:steps]
    judged = min(JUDGED, len(stages))
    original = {e.name: draw(e, pairs, chunk) for e in explainers_of(copy_, mode)}
    rho = {k: [] for k in original}
    constant = {k: [] for k in original}
    for i, (_, module) in enumerate(stages):
        randomise(module, seed + i)
        for e in explainers_of(copy_, mode):
            m = draw(e, pairs, chunk)
            rho[e.name].append(spearman(original[e.name], m))
            constant[e.name].append(float((m.flatten(1).std(1) == 0).float().mean()))
    rng = np.random.default_rng(seed)
    maps = {k: {**step_stats(per_step, rng), "constant_share": constant[k]} for k, per_step in rho.items()}
    for v in maps.values():
        v["pass"] = bool(v["median"] and v["median"][judged - 1] < PASS_BELOW)
    return {"stages": [n for n, _ in stages], "judged_at": judged, "n_pairs": len(pairs),
            "pass_below": PASS_BELOW, "maps": maps,
            "randomised": "the classifier's stages, top-down and cumulatively; the learned map's mask head keeps "
                          "its trained weights (it reads the classifier's features and gradient)"}


def sanity_pairs(ds: ImageCSVDataset, rows: np.ndarray, boxes: dict, model: ROIModel, device) -> Pairs | None:
    """One (image, finding) pair per image of `rows`: its first true finding, else its first boxed one
    (None when there is none to draw: no finding in the test set, or every such image bad)."""
    xs, cls = [], []
    for i in rows.tolist():
        x, y, idx = ds[i]
        if idx < 0:  # bad, skipped
            continue
        found = np.flatnonzero(y.numpy() > 0.5)
        cls.append(int(found[0]) if len(found) else ds.classes.index(boxes[ds.names[i]][0][0]))
        xs.append(x)
    if not xs:
        return None
    return Pairs(model.normalize(torch.stack(xs).to(device)), torch.tensor(cls, device=device), [[] for _ in cls])
