"""Training on CPU: both stages, exact resume in either stage, every preset and the reference's modes
through fit, the command line (its spellings and its size), Ctrl+C, and DDP with two gloo processes."""
import copy
import csv
import json
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
from roi_consistency.errors import UserError
from roi_consistency.files.checkpoint import best_path
from roi_consistency.model.config import MODES, PRESETS, config
from roi_consistency.training.loop import lr_factor
from roi_consistency.training.settings import check_config
from roi_consistency.training.train import fit

ROOT = Path(__file__).resolve().parents[1]


def small_cfg(p, tmp_path, **kw):
    base = dict(train_csv=str(p["train"]), val_csv=str(p["val"]), image_root=str(p["images"]), img_size=48,
                backbone="resnet18", pretrained=False, batch_size=16, accum_steps=2, epochs=1, mask_epochs=1,
                lr=1e-3, workers=0, save=str(tmp_path / "ck" / "model.pt"), log_every=1)
    base.update(kw)
    if base.get("preset") == "seed":
        del base["mask_epochs"]  # joint training has no mask stage
    return config(base.pop("preset", None), **base)


def rows(p) -> int:
    return sum(1 for _ in open(p)) - 1


def log_rows(save) -> list[dict]:
    with open(os.path.splitext(save)[0] + ".log.csv") as fh:
        return list(csv.DictReader(fh))


def small_args(p, save, *extra) -> list[str]:
    """The reference pipeline's own spellings, on a small model."""
    return ["train", "--train_csv", str(p["train"]), "--val_csv", str(p["val"]), "--image_root", str(p["images"]),
            "--backbone", "resnet18", "--no-pretrained", "--img_size", "48", "--batch_size", "16", "--accum_steps",
            "1", "--workers", "0", "--save", str(save), "--lr", "1e-3", *extra]


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] < 0.01


def test_two_stages_write_loadable_checkpoints_and_a_log_per_stage(phantom64, tmp_path):
    cfg = small_cfg(phantom64, tmp_path, img_size=64, epochs=3, batch_size=8, accum_steps=1,
                    val_csv=str(phantom64["test"]))
    result = fit(cfg)
    ck = torch.load(cfg.run.save, map_location="cpu", weights_only=True)
    assert ck["format"] == "roi-consistency/2" and ck["stage"] == "mask"
    assert ck["progress"]["classifier"]["epoch"] == 3 and ck["progress"]["mask"]["epoch"] == 1
    assert ck["classes"][0] == "Atelectasis" and len(ck["classes"]) == 14
    assert ck["config"]["model"]["backbone"] == "resnet18" and set(ck["config"]) == {"data", "model", "method",
                                                                                     "optim", "run"}
    assert set(ck["optim"]) == {"classifier", "mask"} and ck["best"]["stage"] == "mask"
    assert result["metrics"]["val_mean_auroc"] > 0.6
    assert abs(result["metrics"]["kept_fraction"] - round(0.1 * 64 * 64) / (64 * 64)) < 1e-6
    assert best_path(cfg.run.save).is_file()
    log = log_rows(cfg.run.save)
    assert [(r["stage"], r["epoch"]) for r in log] == [("classifier", "1"), ("classifier", "2"),
                                                       ("classifier", "3"), ("mask", "1")]
    # each stage's validation reports its own objective: EVAL-X for the classifier, the mask terms after
    assert float(log[0]["train_bce"]) > 0 and float(log[0]["val_evalx"]) > 0 and log[0]["val_consist"] == ""
    assert float(log[-1]["val_drop"]) > 0 and log[-1]["val_evalx"] == "" and log[-1]["auroc_Effusion"]
    vl = float(log[-1]["val_loss"])
    assert vl == pytest.approx(float(log[-1]["val_consist"]) + 2 * float(log[-1]["val_drop"])
                               + 1e-3 * float(log[-1]["val_tv"]), rel=1e-4)


@pytest.mark.parametrize("stop", ["classifier", "mask"])
def test_resume_mid_epoch_in_either_stage_gives_identical_weights(phantom64, tmp_path, stop):
    straight = fit(small_cfg(phantom64, tmp_path / "a"))
    per_epoch = math.ceil(math.ceil(rows(phantom64["train"]) / 16) / 2)
    at = 3 if stop == "classifier" else per_epoch + 2
    first = fit(small_cfg(phantom64, tmp_path / "b", max_steps=at))  # as Ctrl+C does, part-way through
    ck = torch.load(tmp_path / "b" / "ck" / "model.pt", weights_only=True)
    assert first["step"] == at and ck["stage"] == stop and ck["progress"][stop]["epoch"] == 0
    assert ck["thresholds"] is None  # taken mid-epoch: no operating points of these weights yet
    resumed = fit(small_cfg(phantom64, tmp_path / "b", resume=str(tmp_path / "b" / "ck" / "model.pt")))
    assert resumed["step"] == straight["step"] == 2 * per_epoch
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    done = torch.load(tmp_path / "b" / "ck" / "model.pt", weights_only=True)
    assert done["thresholds"]["step"] == done["step"] and done["thresholds"]["rule"] == "youden"


def test_one_epoch_with_the_reference_spellings_then_resume_adds_exactly_one(phantom64, tmp_path):
    save = tmp_path / "ck.pt"
    cli.main(small_args(phantom64, save, "--epochs", "1"))
    ck = torch.load(save, weights_only=True)
    per_epoch = math.ceil(rows(phantom64["train"]) / 16)
    default_mask_epochs = config().run.mask_epochs
    assert ck["progress"]["classifier"] == {"epoch": 1, "batch": 0, "step": per_epoch}
    assert ck["progress"]["mask"]["epoch"] == default_mask_epochs  # --epochs 1, then the default mask stage
    # --max-steps counts the steps of the model as it stands: the old mask's no longer count
    cli.main(small_args(phantom64, save, "--resume", "--epochs", "2", "--max-steps", str(per_epoch + 1)))
    ck = torch.load(save, weights_only=True)  # stopped inside the added epoch: the old mask no longer counts
    assert ck["stage"] == "classifier" and "mask" not in ck["progress"] and ck["best"] is None
    cli.main(small_args(phantom64, save, "--resume", "--epochs", "2"))
    ck = torch.load(save, weights_only=True)
    assert ck["progress"]["classifier"] == {"epoch": 2, "batch": 0, "step": 2 * per_epoch}
    # the classifier changed, so the mask stage trained again, against it, from its first epoch
    assert ck["progress"]["mask"] == {"epoch": default_mask_epochs, "batch": 0, "step": default_mask_epochs * per_epoch}
    stages = [(r["stage"], r["epoch"]) for r in log_rows(save)]
    assert stages[default_mask_epochs + 1] == ("classifier", "2") and stages[-1] == ("mask", str(default_mask_epochs))
    cli.main(small_args(phantom64, save, "--resume", "--epochs", "2"))  # nothing left to do: a no-op
    assert torch.load(save, weights_only=True)["step"] == ck["step"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_with_any_epoch_count(phantom64, tmp_path, preset):
    for epochs in (1, 2, 3, 10):
        check_config(config(preset, epochs=epochs), {"epochs"})
    # the preset's budget, on a small model: one epoch, then its own mask stage (none for the reference)
    small = dict(backbone="resnet18", pretrained=False, img_size=48, batch_size=16, accum_steps=1, workers=0,
                 train_csv=str(phantom64["val"]), val_csv=str(phantom64["val"]), image_root=str(phantom64["images"]),
                 img_size_start=None, save=str(tmp_path / "p.pt"))
    fit(config(preset, epochs=1, **small), {"epochs", *small})
    ck = torch.load(tmp_path / "p.pt", weights_only=True)
    want = {"joint": 1} if preset == "seed" else {"classifier": 1, "mask": PRESETS[preset]["mask_epochs"]}
    assert {s: p["epoch"] for s, p in ck["progress"].items()} == want
    first = ck["progress"]["joint" if preset == "seed" else "classifier"]
    fit(config(preset, epochs=2, resume=str(tmp_path / "p.pt"), save=str(tmp_path / "p.pt")), {"epochs", "resume"})
    ck = torch.load(tmp_path / "p.pt", weights_only=True)
    then = ck["progress"]["joint" if preset == "seed" else "classifier"]
    assert then == {"epoch": 2, "batch": 0, "step": 2 * first["step"]}  # exactly one more epoch


@pytest.mark.parametrize("mode", MODES)
def test_the_reference_and_each_of_its_modes_train_through_fit(phantom64, tmp_path, mode):
    from roi_consistency.model.network import build_model
    cfg = small_cfg(phantom64, tmp_path, preset="seed", mode=mode, train_csv=str(phantom64["val"]), epochs=1)
    torch.manual_seed(cfg.optim.seed)
    init = copy.deepcopy(build_model(cfg.model, cfg.method, 14).mask_net.state_dict())
    result = fit(cfg)
    assert result["stages"] == {"joint": {"epoch": 1, "batch": 0, "step": math.ceil(rows(phantom64["val"]) / 32)}}
    row = log_rows(cfg.run.save)[-1]
    w = cfg.method.loss_weights()
    terms = {k: float(row[f"train_{k}"]) for k in ("bce", "consist", "drop", "sparse", "tv")}
    # the logged loss is the joint objective with this mode's weights (its term switched off)
    want = terms["bce"] + sum(w[k] * terms[t] for k, t in (("alpha", "consist"), ("beta", "drop"),
                                                            ("gamma", "sparse"), ("delta", "tv")))
    assert float(row["train_loss"]) == pytest.approx(want, rel=1e-5)
    learned = any(not torch.equal(v, init[k]) for k, v in result["model"].mask_net.state_dict().items())
    assert learned == (mode not in ("standard", "random_mask"))  # the two controls have no learned mask
    if mode == "standard":
        assert terms["consist"] == 0 and terms["tv"] == 0


def test_cli_aliases_preset_and_a_short_help(tmp_path, capsys):
    cfg, given = cli.train_config_from_args(cli.build_parser().parse_args(
        ["train", "--preset", "cpu-demo", "--batch_size", "4", "--img_size", "32", "--keep_ratio", "0.2",
         "--no-pretrained", "--train_csv", "a.csv", "--val_csv", "b.csv", "--image_root", "im", "--accum_steps", "3"]))
    assert (cfg.optim.batch_size, cfg.model.img_size, cfg.method.keep_ratio, cfg.model.backbone) == (4, 32, 0.2,
                                                                                                   "resnet18")
    assert (cfg.data.train_csv, cfg.data.val_csv, cfg.data.image_root, cfg.optim.accum_steps) == ("a.csv", "b.csv",
                                                                                                  "im", 3)
    assert cfg.model.pretrained is False and cfg.run.preset == "cpu-demo" and cfg.run.epochs == 7
    assert {"batch_size", "preset"} <= given and not {"lr", "epochs"} & given  # typed flags only
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    options = [line for line in text.split("options:")[1].splitlines() if line.startswith("  -")]  # not wrapped help
    assert len(options) <= 31, len(options)  # 30, and --classes for datasets beyond NIH
    assert "--mask-epochs" in text and "--batch_size" not in text  # the reference spellings are hidden aliases


def test_resume_names_every_ignored_flag_in_one_warning(phantom64, tmp_path, capsys):
    save = tmp_path / "ck.pt"
    cli.main(small_args(phantom64, save, "--epochs", "1", "--mask-epochs", "0", "--train_csv", str(phantom64["val"])))
    capsys.readouterr()
    cli.main(small_args(phantom64, save, "--resume", "--epochs", "1", "--mask-epochs", "0", "--lr", "0.5",
                        "--backbone", "resnet50", "--train_csv", str(phantom64["val"])))
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "ignored" in line]
    assert len(warning) == 1 and "--lr 0.5 (checkpoint: 0.001)" in warning[0] and "--backbone resnet50" in warning[0]
    assert "--epochs" not in warning[0] and "--batch-size" not in warning[0]  # run settings, and unchanged ones


def test_a_preset_given_again_on_resume_sets_its_run_settings_and_the_rest_comes_from_the_checkpoint():
    from roi_consistency.files.checkpoint import FORMAT
    from roi_consistency.training.settings import resume_config
    trained = config(epochs=1, mask_epochs=0, lr=3e-3, save="a.pt", classes=["Mass"])
    ckpt = {"format": FORMAT, "config": trained.to_dict()}
    cfg = resume_config(config("cpu-demo", resume="a.pt"), ckpt, {"preset", "resume"}, "a.pt")
    assert (cfg.run.epochs, cfg.run.mask_epochs, cfg.run.workers) == (7, 1, 2)  # the preset's run settings
    assert (cfg.optim.lr, cfg.model.backbone, cfg.run.preset) == (3e-3, "convnext_base", None)  # the checkpoint's
    cfg = resume_config(config(resume="b.pt", max_steps=None), ckpt, {"resume"}, "b.pt")
    assert (cfg.run.epochs, cfg.run.save, cfg.run.resume) == (1, "b.pt", "b.pt")  # writes where it resumed from
    check_config(config("cpu-demo", mode="standard"), {"mode", "preset"})  # the control under a preset's budget


def _interrupt(phantom64, save, sig, *extra):
    """Start training in a subprocess, send `sig` once the first checkpoint exists; (returncode, output)."""
    cmd = [sys.executable, "-m", "roi_consistency", *small_args(phantom64, save, "--batch_size", "4",
                                                                "--save-every", "1", "--workers", "1", *extra)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not save.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert save.exists(), "no checkpoint appeared"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def test_ctrl_c_leaves_a_resumable_checkpoint_and_exits_130(phantom64, tmp_path):
    save = tmp_path / "ck.pt"
    code, out = _interrupt(phantom64, save, signal.SIGINT, "--epochs", "50")
    assert code == 130, out
    assert "continue with --resume" in out
    ck = torch.load(save, weights_only=True)
    assert ck["step"] >= 1 and ck["stage"] == "classifier" and ck["progress"]["classifier"]["epoch"] == 0
    cfg = config(resume=str(save), save=str(save), workers=0, max_steps=ck["step"] + 1)
    assert fit(cfg, {"resume", "save", "workers", "max_steps"})["step"] == ck["step"] + 1


def test_sigterm_saves_exits_143_and_resume_finishes_the_run(phantom64, tmp_path):
    """What Slurm sends before SIGKILL: a checkpoint at the next step boundary, exit 143; --resume then
    trains to the planned epoch counts."""
    save = tmp_path / "ck.pt"
    small = ("--train_csv", str(phantom64["val"]))
    code, out = _interrupt(phantom64, save, signal.SIGTERM, "--epochs", "2", "--mask-epochs", "1", *small)
    assert code == 143, out
    assert "stopping (SIGTERM)" in out and "continue with --resume" in out
    ck = torch.load(save, weights_only=True)
    assert ck["progress"]["classifier"]["epoch"] < 2
    run = subprocess.run([sys.executable, "-m", "roi_consistency", *small_args(phantom64, save, "--resume", *small)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    ck = torch.load(save, weights_only=True)
    assert {s: p["epoch"] for s, p in ck["progress"].items()} == {"classifier": 2, "mask": 1}


def test_under_torchrun_a_sigterm_to_one_rank_stops_every_rank_at_the_same_step(phantom64, tmp_path):
    """A scheduler may signal the ranks at different moments; they agree to stop at one step, rank 0
    writes that step, and --resume then finishes the run."""
    args = small_args(phantom64, tmp_path / "ck.pt", "--train_csv", str(phantom64["val"]), "--batch_size", "8",
                      "--save-every", "1", "--epochs", "20", "--mask-epochs", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "ck.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (tmp_path / "ck.pt").exists(), "no checkpoint appeared"
    os.kill(int((tmp_path / "pid1").read_text()), signal.SIGTERM)  # rank 1 only
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["signal"] == signal.SIGTERM and r1["signal"] == signal.SIGTERM  # rank 0 stopped too
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert r0["step"] == r1["step"] == ck["step"] and ck["progress"]["classifier"]["epoch"] < 20
    run = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert {s: p["epoch"] for s, p in ck["progress"].items()} == {"classifier": 20, "mask": 1}


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_ddp_two_processes_on_cpu_with_the_reference_spellings(phantom64, tmp_path):
    save = tmp_path / "ddp.pt"
    args = small_args(phantom64, save, "--epochs", "1", "--mask-epochs", "1", "--batch_size", "8",
                      "--accum_steps", "2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), *args]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    per_stage = math.ceil(math.ceil(rows(phantom64["train"]) / 2 / 8) / 2)
    assert r0["world"] == 2 and r0["step"] == 2 * per_stage  # a classifier epoch, then a mask epoch
    assert r0["sha"] == r1["sha"]  # every rank ends with the same weights, through both stages
    assert r0["n_val"] == rows(phantom64["val"])  # gathered across ranks, padding removed
    ck = torch.load(save, weights_only=True)
    assert ck["step"] == r0["step"] and ck["progress"]["mask"]["epoch"] == 1
    # the same under torchrun: --resume with --epochs 2 adds exactly one classifier epoch, then the mask again
    run = subprocess.run(cmd + ["--resume", "--epochs", "2"], env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    ck = torch.load(save, weights_only=True)
    assert ck["progress"]["classifier"] == {"epoch": 2, "batch": 0, "step": 2 * per_stage}
    assert ck["progress"]["mask"]["epoch"] == 1 and r0["sha"] == r1["sha"]


def test_two_stage_trains_the_classifier_then_only_the_mask(phantom64, tmp_path):
    per_epoch = math.ceil(rows(phantom64["train"]) / 16)
    stage1 = fit(small_cfg(phantom64, tmp_path, accum_steps=1, max_steps=per_epoch, save=str(tmp_path / "s1.pt")))
    assert stage1["stages"]["classifier"]["epoch"] == 1 and stage1["step"] == per_epoch  # stopped at the boundary
    cfg = small_cfg(phantom64, tmp_path, accum_steps=1)
    torch.manual_seed(cfg.optim.seed)
    from roi_consistency.model.network import build_model
    init = build_model(cfg.model, cfg.method, 14).state_dict()
    full = fit(cfg)
    m1, m2 = stage1["model"], full["model"]
    assert not torch.equal(m1.backbone.conv1.weight, init["backbone.conv1.weight"])  # stage 1 moved the backbone
    for k, v in m1.mask_net.state_dict().items():  # ... but not the mask network
        assert torch.equal(v, init["mask_net." + k]), k
    for k, v in m2.backbone.state_dict().items():  # stage 2 kept the classifier, BatchNorm statistics included
        assert torch.equal(v, m1.backbone.state_dict()[k]), k
    assert any(not torch.equal(v, m1.mask_net.state_dict()[k]) for k, v in m2.mask_net.state_dict().items())
    assert torch.load(best_path(cfg.run.save), weights_only=True)["stage"] == "mask"  # the best is a mask epoch


def test_bad_settings_are_refused_by_flag():
    with pytest.raises(UserError, match="--keep-ratio"):
        check_config(config(keep_ratio=1.5), set())
    with pytest.raises(UserError, match="--epochs 0 .* --weights"):
        check_config(config(epochs=0), set())
    with pytest.raises(UserError, match="not both 0"):
        check_config(config(epochs=0, mask_epochs=0, weights="x.pt"), set())
    with pytest.raises(UserError, match="--mask-epochs: joint"):
        check_config(config("seed", mask_epochs=2), {"mask_epochs"})
    with pytest.raises(UserError, match="--mode no_sparse changes nothing"):
        check_config(config(mode="no_sparse"), set())  # the method's sparsity weight is already 0
    check_config(config("seed", mode="no_sparse"), set())  # the reference's is not
    with pytest.raises(UserError, match="--img-size-start"):
        check_config(config(img_size=64, img_size_start=16), set())


def test_mask_stage_alone_against_a_classifier_from_weights(trained64, phantom64, tmp_path):
    """--epochs 0 with --weights: only the mask trains, against the given classifier, with its fill."""
    cfg = small_cfg(phantom64, tmp_path, epochs=0, weights=str(trained64), accum_steps=1, val_csv=None)
    given = torch.load(trained64, weights_only=True)
    model = fit(cfg)["model"]
    for k, v in model.backbone.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(v, given["backbone"][k]), k
    ck = torch.load(cfg.run.save, weights_only=True)
    assert torch.equal(ck["fill_image"], given["fill_image"]) and set(ck["progress"]) == {"mask"}


def test_progressive_resizing_grows_the_classifier_input_then_holds(phantom64, tmp_path, monkeypatch):
    """--img-size-start: classifier epochs see inputs growing to --img-size; the mask stage sees --img-size."""
    from roi_consistency.data import dataset
    from roi_consistency.training import classifier, mask
    from roi_consistency.training.train import input_size
    seen: dict[str, set] = {}

    def spy(name):
        def to_input(x, device, size):
            out = dataset.to_input(x, device, size)
            seen.setdefault(name, []).append(out.shape[-1])
            return out
        return to_input

    monkeypatch.setattr(classifier, "to_input", spy("classifier"))
    monkeypatch.setattr(mask, "to_input", spy("mask"))
    cfg = small_cfg(phantom64, tmp_path, epochs=3, img_size=48, img_size_start=32, accum_steps=1, val_csv=None)
    fit(cfg)
    per_epoch = math.ceil(rows(phantom64["train"]) / 16)
    assert seen["classifier"] == [32] * per_epoch + [40] * per_epoch + [48] * per_epoch
    assert set(seen["mask"]) == {48}
    assert [input_size(config(img_size=64, img_size_start=128), "classifier", e, 4) for e in range(4)] == [64] * 4


def test_non_finite_losses_stop_the_run_and_the_last_good_checkpoint_stays(phantom64, tmp_path, monkeypatch):
    from roi_consistency.training import classifier
    real, calls = classifier.classifier_loss, []

    def poisoned(*a, **k):
        loss, terms = real(*a, **k)
        calls.append(1)
        return (loss * float("nan"), terms) if len(calls) > 4 else (loss, terms)
    monkeypatch.setattr(classifier, "classifier_loss", poisoned)
    cfg = small_cfg(phantom64, tmp_path, accum_steps=1, save_every=1, val_csv=None)
    with pytest.raises(UserError, match=r"weights are no longer finite at step 5: stopped without saving"):
        fit(cfg)  # the first non-finite loss poisoned the weights: the save after it is refused
    ck = torch.load(cfg.run.save, weights_only=True)
    assert ck["step"] == 4  # the last step with a finite loss; nothing after it was written
    assert all(torch.isfinite(v).all() for v in ck["backbone"].values() if v.is_floating_point())
    calls.clear()
    cfg = small_cfg(phantom64, tmp_path / "b", accum_steps=1, val_csv=None)  # no save until the epoch ends
    with pytest.raises(UserError, match=r"not finite for 3 steps in a row \(classifier epoch 1/1, step 7\)"):
        fit(cfg)
    assert not os.path.exists(cfg.run.save)


def test_a_ddp_resume_restores_each_ranks_own_random_state(phantom64, tmp_path):
    """Stopped part-way and resumed under torchrun, two ranks end with the weights of a straight run: each
    rank draws its own EVAL-X masks, so each must get its own RNG state back."""
    def torchrun(out, *extra):
        args = small_args(phantom64, out / "ck.pt", "--train_csv", str(phantom64["val"]), "--batch_size", "8",
                          "--accum_steps", "1", "--epochs", "1", "--mask-epochs", "1", *extra)
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(ROOT / "tests" / "ddp_worker.py"), str(out), *args], env=_env(), capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = torchrun(tmp_path / "a")
    torchrun(tmp_path / "b", "--max-steps", "2")
    ck = torch.load(tmp_path / "b" / "ck.pt", weights_only=True)
    assert len(ck["rng_per_rank"]) == 2 and not torch.equal(*(r["torch"] for r in ck["rng_per_rank"]))
    resumed = torchrun(tmp_path / "b", "--resume")
    assert resumed[0]["step"] == straight[0]["step"] and resumed[0]["sha"] == straight[0]["sha"]
