"""Checkpoints: the format of an earlier version still means what it meant, or is refused with what to
do; every file is written atomically; and no function in the package outgrows a screen."""
import ast
from pathlib import Path

import pytest
import torch

from roi_consistency.atomic import write_text
from roi_consistency.checkpoint import load_trained
from roi_consistency.config import TrainConfig, config
from roi_consistency.errors import UserError

SRC = Path(__file__).resolve().parents[1] / "src" / "roi_consistency"


def flat_v1(ck: dict, **changes) -> dict:
    """The checkpoint as format roi-consistency/1 wrote it: a flat config, the classifier and mask epochs in
    one --epochs count, the design named by --mask-net/--mask-head/--mask-norm/--objective."""
    cfg = TrainConfig.from_dict(ck["config"])
    flat = {**vars(cfg.data), **vars(cfg.model), **vars(cfg.optim), **vars(cfg.run),
            **{k: v for k, v in vars(cfg.method).items() if k not in ("evalx_min_keep",)}}
    flat.update({"epochs": cfg.run.epochs + cfg.run.mask_epochs, "mask_start_epoch": cfg.run.epochs,
                 "mask_net": "features_grad", "mask_head": "per_class", "mask_norm": "standardize", "mask_loss": "bce",
                 "passes": "auto", "device_transforms": None, "channels_last": None, "log_csv": None, **changes})
    del flat["mask_epochs"]
    return {**{k: v for k, v in ck.items() if k not in ("config", "format")}, "format": "roi-consistency/1",
            "config": flat}


def test_a_checkpoint_of_the_previous_format_loads_and_predicts_the_same(trained64, tmp_path):
    ck = torch.load(trained64, weights_only=True)
    torch.save(flat_v1(ck), tmp_path / "v1.pt")
    old, old_cfg = load_trained(tmp_path / "v1.pt")
    new, new_cfg = load_trained(trained64)
    assert old_cfg.method == new_cfg.method and old_cfg.model == new_cfg.model
    assert (old_cfg.run.epochs, old_cfg.run.mask_epochs) == (new_cfg.run.epochs, new_cfg.run.mask_epochs)
    x = torch.rand(2, 1, 48, 48)
    xn = new.normalize(x)
    torch.testing.assert_close(old.explain(xn).logits, new.explain(xn).logits)
    torch.testing.assert_close(old(x), new(x))


def test_a_flat_config_that_predates_a_setting_means_what_it_was_trained_with():
    # the reference as first written: no objective, mask net, norm or fill were saved yet
    old = TrainConfig.from_dict({"backbone": "resnet18", "epochs": 4, "alpha": 1.0, "beta": 0.5})
    assert old.method.joint and old.method.fill == "mean" and old.run.epochs == 4


def test_previous_designs_this_version_no_longer_builds_are_refused_with_the_commit(trained64, tmp_path):
    from roi_consistency.config import LAST_FLAT
    ck = torch.load(trained64, weights_only=True)
    torch.save(flat_v1(ck, mask_net="dilated", mask_head="shared"), tmp_path / "dilated.pt")
    with pytest.raises(UserError, match=f"dilated.pt.*mask_net dilated.*commit {LAST_FLAT}"):
        load_trained(tmp_path / "dilated.pt")


def test_resuming_the_previous_format_is_refused_with_what_to_do(trained64, tmp_path):
    from roi_consistency.train import fit
    torch.save(flat_v1(torch.load(trained64, weights_only=True)), tmp_path / "v1.pt")
    with pytest.raises(UserError, match=r"cannot be resumed.*--weights"):
        fit(config(resume=str(tmp_path / "v1.pt")), {"resume"})


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_text(target, "old")

    def full_disk(self, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(UserError, match="could not write .*metrics.json: No space left on device"):
        write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_no_function_in_the_package_is_longer_than_a_screen():
    """60 lines at most, counted from the `def` line to the last line of the body, docstring included."""
    long = [f"{p.name}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in sorted(SRC.glob("*.py")) for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long
