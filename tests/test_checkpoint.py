"""Checkpoints: the one way a trained model comes back (model/trained.py); the format of an earlier
version is refused with what to do; every file is written atomically."""
from pathlib import Path

import pytest
import torch

from roi_consistency.errors import UserError
from roi_consistency.files.atomic import write_text
from roi_consistency.files.checkpoint import LAST_READS_V1
from roi_consistency.model.config import config
from roi_consistency.model.trained import load_trained, read_weights
from roi_consistency.training.train import fit


def v1(ck: dict) -> dict:
    """The checkpoint as format roi-consistency/1 labelled it (its config was flat; the tag is what counts)."""
    return {**ck, "format": "roi-consistency/1"}


def test_the_previous_format_is_refused_naming_the_commit_that_reads_it(trained64, tmp_path):
    torch.save(v1(torch.load(trained64, weights_only=True)), tmp_path / "v1.pt")
    with pytest.raises(UserError, match=f"v1.pt was written by an earlier version.*commit {LAST_READS_V1}"):
        load_trained(tmp_path / "v1.pt")
    with pytest.raises(UserError, match=f"--resume .*v1.pt was written by an earlier version.*{LAST_READS_V1}"):
        fit(config(resume=str(tmp_path / "v1.pt")), {"resume"})


def test_weights_of_any_checkpoint_of_this_tool_start_a_classifier(trained64, tmp_path):
    """--weights needs only the classifier's tensors, which format /1 stored as /2 does."""
    ck = torch.load(trained64, weights_only=True)
    torch.save(v1(ck), tmp_path / "v1.pt")
    w = read_weights(str(tmp_path / "v1.pt"))
    assert w.backbone.keys() == ck["backbone"].keys() and torch.equal(w.fill_image, ck["fill_image"])
    torch.save(ck["backbone"], tmp_path / "plain.pt")
    assert read_weights(str(tmp_path / "plain.pt")).fill_image is None
    for name, junk in (("list.pt", [1, 2]), ("junk.pt", {"backbone": 3})):
        torch.save(junk, tmp_path / name)
        with pytest.raises(UserError, match=f"{name}: not a state dict"):
            read_weights(str(tmp_path / name))


def test_weights_that_do_not_fit_their_config_are_an_error_naming_the_file(trained64, tmp_path):
    ck = torch.load(trained64, weights_only=True)
    ck["config"]["model"]["backbone"] = "resnet34"
    torch.save(ck, tmp_path / "swapped.pt")
    with pytest.raises(UserError, match="swapped.pt: its backbone weights do not fit the model its config describes"):
        load_trained(tmp_path / "swapped.pt")
    del ck["config"]
    torch.save(ck, tmp_path / "no-config.pt")
    with pytest.raises(UserError, match="no-config.pt: its training config is missing"):
        load_trained(tmp_path / "no-config.pt")


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
