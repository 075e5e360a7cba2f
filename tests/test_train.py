"""Training on CPU: a short run, exact resume, Ctrl+C, and DDP with two gloo processes."""
import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from roi_consistency import cli
from roi_consistency.checkpoint import best_path
from roi_consistency.config import TrainConfig
from roi_consistency.train import fit, lr_factor

ROOT = Path(__file__).resolve().parents[1]


def small_cfg(p, tmp_path, **kw):
    base = dict(train_csv=str(p["train"]), val_csv=str(p["val"]), image_root=str(p["images"]), img_size=48,
                backbone="resnet18", pretrained=False, batch_size=16, accum_steps=2, epochs=2, lr=1e-3,
                workers=0, save=str(tmp_path / "ck" / "model.pt"), log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] < 0.01


def test_short_run_writes_loadable_checkpoint_above_chance(phantom64, tmp_path):
    cfg = small_cfg(phantom64, tmp_path, img_size=64, epochs=3, batch_size=8, accum_steps=1,
                    val_csv=str(phantom64["test"]))
    result = fit(cfg)
    ck = torch.load(cfg.save, map_location="cpu", weights_only=True)
    assert ck["epoch"] == 3 and ck["classes"][0] == "Atelectasis" and len(ck["classes"]) == 14
    assert ck["config"]["backbone"] == "resnet18" and isinstance(ck["config"], dict)
    # the default head is saved resolved: what "auto" means may change, a checkpoint's head must not
    assert ck["config"]["mask_net"] == "features_grad" and ck["config"]["mask_head"] == "per_class"
    assert set(ck) >= {"backbone", "mask_net", "optimizer", "scheduler", "step", "rng", "best_metric"}
    assert result["metrics"]["val_mean_auroc"] > 0.6
    assert abs(result["metrics"]["kept_fraction"] - round(0.1 * 64 * 64) / (64 * 64)) < 1e-6
    assert best_path(cfg.save).is_file()
    with open(os.path.splitext(cfg.save)[0] + ".log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[-1]["train_bce"]) > 0 and rows[-1]["auroc_Effusion"]


def test_resume_mid_epoch_gives_identical_weights(phantom64, tmp_path):
    straight = fit(small_cfg(phantom64, tmp_path / "a"))
    # stop part-way through the first epoch (as Ctrl+C does), then resume to the end
    first = fit(small_cfg(phantom64, tmp_path / "b", max_steps=3))
    assert first["epoch"] == 0 and first["step"] == 3
    resumed = fit(small_cfg(phantom64, tmp_path / "b", resume=str(tmp_path / "b" / "ck" / "model.pt")))
    assert resumed["step"] == straight["step"]
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cli_aliases_and_preset(tmp_path):
    args = cli.build_parser().parse_args(["train", "--preset", "cpu-demo", "--batch_size", "4",
                                           "--img_size", "32", "--keep_ratio", "0.2", "--no-pretrained"])
    cfg = cli.train_config_from_args(args)
    assert (cfg.batch_size, cfg.img_size, cfg.keep_ratio, cfg.backbone) == (4, 32, 0.2, "resnet18")
    assert cfg.pretrained is False and cfg.preset == "cpu-demo"


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_ctrl_c_leaves_a_resumable_checkpoint(phantom64, tmp_path):
    save = tmp_path / "ck.pt"
    cmd = [sys.executable, "-m", "roi_consistency", "train", "--train-csv", str(phantom64["train"]),
           "--val-csv", str(phantom64["val"]), "--image-root", str(phantom64["images"]), "--img-size", "48",
           "--backbone", "resnet18", "--no-pretrained", "--batch-size", "4", "--accum-steps", "1",
           "--epochs", "50", "--workers", "1", "--save", str(save), "--save-every", "1"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not save.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert save.exists(), "no checkpoint appeared"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "continue with --resume" in out
    ck = torch.load(save, weights_only=True)
    assert ck["step"] >= 1 and ck["epoch"] == 0
    cfg = TrainConfig(resume=str(save), save=str(save), epochs=50, workers=0, max_steps=ck["step"] + 1)
    assert fit(cfg)["step"] == ck["step"] + 1


def test_ddp_two_processes_on_cpu(phantom64, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), str(phantom64["train"]), str(phantom64["val"]),
           str(phantom64["images"])]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    import json
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    n_train = sum(1 for _ in open(phantom64["train"])) - 1
    assert r0["world"] == 2 and r0["step"] == 2 * math.ceil(math.ceil(n_train / 2 / 8) / 2)  # two epochs
    assert r0["sha"] == r1["sha"]  # every rank ends with the same weights, through both stages
    n_val = sum(1 for _ in open(phantom64["val"])) - 1
    assert r0["n_val"] == n_val  # gathered across ranks, padding removed
    ck = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ck["step"] == r0["step"]


def test_two_stage_trains_classifier_then_only_the_mask(phantom64, tmp_path):
    import copy

    from roi_consistency.model import build_model
    cfg = small_cfg(phantom64, tmp_path, objective="two_stage", epochs=2, mask_start_epoch=1, mask_net="dilated",
                    passes="fused", accum_steps=1)
    torch.manual_seed(cfg.seed)
    init = copy.deepcopy(build_model(cfg.to_dict()).state_dict())
    one_epoch = math.ceil((sum(1 for _ in open(phantom64["train"])) - 1) / cfg.batch_size)
    stage1 = fit(small_cfg(phantom64, tmp_path / "s1", **{**cfg.__dict__, "max_steps": one_epoch,
                                                            "save": str(tmp_path / "s1.pt")}))
    assert stage1["epoch"] == 1 and stage1["step"] == one_epoch  # stopped where the mask stage begins
    full = fit(cfg)
    m1, m2 = stage1["model"], full["model"]
    # stage 1 moved the backbone but not the mask network
    assert not torch.equal(m1.backbone.conv1.weight, init["backbone.conv1.weight"])
    for k, v in m1.mask_net.state_dict().items():
        assert torch.equal(v, init["mask_net." + k]), k
    # stage 2 moved only the mask network; the classifier (BatchNorm statistics included) stayed frozen
    for k, v in m2.backbone.state_dict().items():
        assert torch.equal(v, m1.backbone.state_dict()[k]), k
    assert any(not torch.equal(v, m1.mask_net.state_dict()[k]) for k, v in m2.mask_net.state_dict().items())
    assert best_path(cfg.save).is_file()  # the best checkpoint comes from the mask stage
    assert torch.load(best_path(cfg.save), weights_only=True)["epoch"] == 2


def test_bad_mask_settings_are_refused_by_flag():
    from roi_consistency.errors import UserError
    from roi_consistency.model import build_model
    from roi_consistency.train import check_config
    with pytest.raises(UserError, match="--min-keep-ratio"):
        check_config(TrainConfig(keep_ratio=0.1, min_keep_ratio=0.2))
    with pytest.raises(UserError, match="--mask-start-epoch"):
        check_config(TrainConfig(epochs=3, mask_start_epoch=3))
    with pytest.raises(UserError, match="--weights"):
        check_config(TrainConfig(epochs=3, mask_start_epoch=0))
    assert TrainConfig(epochs=8).mask_start() == 5 and TrainConfig(epochs=2).mask_start() == 1
    with pytest.raises(UserError, match="--mask-head per_class needs"):
        build_model(TrainConfig(backbone="resnet18", pretrained=False, mask_net="tiny",
                                mask_head="per_class").to_dict())


def test_mask_stage_alone_against_a_classifier_from_weights(trained64, phantom64, tmp_path):
    """--mask-start-epoch 0 with --weights: only the mask trains, against the given classifier."""
    cfg = small_cfg(phantom64, tmp_path, epochs=1, mask_start_epoch=0, weights=str(trained64), img_size=48,
                    accum_steps=1, val_csv=None)
    given = torch.load(trained64, weights_only=True)["backbone"]
    model = fit(cfg)["model"]
    for k, v in model.backbone.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(v, given[k]), k
    assert torch.load(cfg.save, weights_only=True)["fill_image"] is not None


def test_progressive_resizing_grows_the_classifier_input_then_holds(phantom64, tmp_path, monkeypatch):
    """--img-size-start: classifier epochs see inputs growing to --img-size; the mask stage sees --img-size."""
    from roi_consistency.errors import UserError
    from roi_consistency.train import Trainer, check_config
    seen: dict[int, set] = {}
    to_device = Trainer.to_device

    def spy(self, x, size=None):
        out = to_device(self, x, size)
        if self.model.training:
            seen.setdefault(self.epoch, set()).add(tuple(out.shape[-2:]))
        return out

    monkeypatch.setattr(Trainer, "to_device", spy)
    cfg = small_cfg(phantom64, tmp_path, objective="two_stage", epochs=4, mask_start_epoch=3, img_size=48,
                    img_size_start=32, accum_steps=1, max_steps=None)
    result = fit(cfg)
    assert seen == {0: {(32, 32)}, 1: {(40, 40)}, 2: {(48, 48)}, 3: {(48, 48)}}
    assert result["metrics"]["kept_fraction"] == pytest.approx(round(0.1 * 48 * 48) / (48 * 48))
    with pytest.raises(UserError, match="--img-size-start"):
        check_config(TrainConfig(img_size=64, img_size_start=16))
    # a start at or above --img-size (e.g. a preset's, under a smaller --img-size) means no ramp
    import types
    flat = types.SimpleNamespace(cfg=TrainConfig(img_size=64, img_size_start=128, epochs=4, mask_start_epoch=3))
    assert [Trainer.input_size(flat, e) for e in range(4)] == [64] * 4
