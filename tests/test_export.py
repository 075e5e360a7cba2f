"""Export: a folder read with safetensors and JSON alone predicts what the checkpoint predicts."""
import json
import shutil

import numpy as np
import pytest
import torch

import roi_consistency as rc
from roi_consistency import cli
from roi_consistency.errors import UserError
from roi_consistency.model.trained import load_trained
from roi_consistency.runtime import cpu_features, cpu_name


@pytest.fixture(scope="module")
def exported(trained64, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    metrics = out.parent / "metrics.json"
    metrics.write_text(json.dumps({
        "n_images": 40, "keep_ratio": 0.1, "maps": ["learned", "gradcam"], "mean_auroc": {"full": 0.9312},
        "faithfulness": {k: {"comprehensiveness": {"0.1": v}, "sufficiency": {"0.1": 0.01}} for k, v in
                         (("learned", 0.5871), ("gradcam", 0.4))},
        "localisation": {"learned": {"pointing_game": 0.75}, "gradcam": {"pointing_game": 0.5}},
        "uncertainty": {"mean_auroc_full": [0.9, 0.95], "maps": {}}}))
    cli.main(["export", "--checkpoint", str(trained64), "--out", str(out), "--metrics", str(metrics)])
    return out


def test_export_then_load_predicts_what_the_checkpoint_predicts(trained64, phantom64, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    images = sorted(phantom64["images"].iterdir())[:5]
    a, b = rc.load(trained64).crop_drop(images), rc.load(exported).crop_drop(images)
    for k in ("full", "crop", "drop"):
        assert np.abs(a[k] - b[k]).max() < 1e-6, k
    assert np.array_equal(a["mask"], b["mask"]) and a["mask_class"] == b["mask_class"]
    ck = torch.load(trained64, weights_only=True)
    config = json.loads((exported / "config.json").read_text())
    assert config["classes"] == ck["classes"] and config["img_size"] == 48 and config["keep_ratio"] == 0.1
    assert config["thresholds"]["values"] == ck["thresholds"]["values"] and config["package_version"] == rc.__version__
    assert config["training_config"]["model"]["backbone"] == "resnet18"
    assert rc.load(exported).thresholds == ck["thresholds"]
    env = ck["environment"]  # what the weights were trained on travels with them
    assert env["torch"] == torch.__version__ and env["threads"] >= 1 and env["processes"] == 1
    assert env["device"] == "cpu" and env["features"] == cpu_features()
    assert config["trained_on"] == env and rc.load(exported).trained_on == env


def test_the_model_card_says_what_it_was_trained_on_and_what_it_is_not_for(trained64, phantom64, exported):
    card = (exported / "MODEL_CARD.md").read_text()
    n_val = sum(1 for _ in open(phantom64["val"])) - 1
    assert f"{n_val:,} images" in card and "patients" in card and "built-in phantom" in card
    assert "Not for clinical use" in card and "NLP" in card and "resnet18" in card
    assert "0.587" in card and "0.931 [0.900, 0.950]" in card and "| learned |" in card
    env = torch.load(trained64, weights_only=True)["environment"]  # the machine that trained it
    ext = f" with {', '.join(env['features'])}" if env["features"] else ""
    assert f"- trained on: {env['name']}{ext} ({env['threads']} threads, torch {torch.__version__})" in card


def test_the_cpu_is_told_apart_by_its_vector_extensions():
    zen4 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16\n"
    assert cpu_name(zen4) == "AMD EPYC" and cpu_features(zen4) == ["AVX2", "AVX-512", "AVX512-BF16"]
    assert cpu_features("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n") == ["AVX2"]
    assert cpu_features("") == [] and cpu_name("") != ""


def test_a_folder_with_a_missing_or_mismatched_file_is_refused(trained64, exported, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        load_trained(bad)
    shutil.copy(exported / "model.safetensors", bad / "model.safetensors")
    with open(bad / "model.safetensors", "r+b") as fh:  # one byte changed deep in the weights
        fh.seek(-100, 2)
        byte = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(UserError, match="does not match config.json"):
        load_trained(bad)
    shutil.copy(exported / "model.safetensors", bad / "model.safetensors")
    config = json.loads((bad / "config.json").read_text())
    config["training_config"]["model"]["backbone"] = "resnet34"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="weights do not fit the model its config describes"):
        load_trained(bad)


def test_infer_takes_the_folder_as_its_checkpoint(trained64, phantom64, exported, tmp_path, capsys):
    image = sorted(phantom64["images"].iterdir())[0]
    cli.main(["infer", "--checkpoint", str(exported), "--image", str(image)])
    from_folder = capsys.readouterr().out
    cli.main(["infer", "--checkpoint", str(trained64), "--image", str(image)])
    assert capsys.readouterr().out == from_folder
