"""Bad inputs are explained before any work starts, in one or two lines naming the file, row or flag."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from roi_consistency import cli
from roi_consistency.data.preflight import check_images, image_problem
from roi_consistency.errors import UserError
from roi_consistency.files.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def broken(phantom64, tmp_path):
    """A copy of the phantom's images where the first image of the validation CSV is gone and the second is
    cut to 300 bytes; the validation CSV serves as a small training CSV."""
    images = tmp_path / "images"
    shutil.copytree(phantom64["images"], images, symlinks=False)
    names = [line.split(",")[0] for line in open(phantom64["val"]).read().splitlines()[1:]]
    (images / names[0]).unlink()
    data = (images / names[1]).read_bytes()
    (images / names[1]).unlink()
    (images / names[1]).write_bytes(data[:300])
    return {"images": images, "csv": phantom64["val"], "missing": names[0], "truncated": names[1]}


def error_lines(err: str) -> list[str]:
    """What a command printed to stderr besides its progress bars."""
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "img/s" not in ln]


def train_args(p, images, save, *extra):
    return ["train", "--train-csv", str(p), "--val-csv", str(p), "--image-root", str(images), "--backbone",
            "resnet18", "--no-pretrained", "--img-size", "32", "--batch-size", "16", "--accum-steps", "1",
            "--epochs", "1", "--mask-epochs", "1", "--workers", "0", "--save", str(save), *extra]


def test_image_problems_are_named(broken, phantom64, tmp_path):
    assert image_problem(broken["images"] / broken["missing"]) == "missing"
    assert "cut short (300 bytes)" in image_problem(broken["images"] / broken["truncated"])
    (tmp_path / "x.png").write_bytes(b"hello")
    assert image_problem(tmp_path / "x.png") == "neither a PNG, a JPEG nor a DICOM file"
    good = sorted(p.name for p in phantom64["images"].iterdir())[:50]
    assert check_images(good, phantom64["images"], "csv", progress=False) == {}  # RGBA and gray PNGs pass


def test_bad_images_stop_training_before_it_starts_naming_them(broken, tmp_path, capsys):
    save = tmp_path / "ck.pt"
    with pytest.raises(SystemExit) as stop:
        cli.main(train_args(broken["csv"], broken["images"], save))
    err = "\n".join(error_lines(capsys.readouterr().err))
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert "2 bad image(s)" in err and broken["missing"] in err and broken["truncated"] in err
    assert "--skip-bad-images" in err and not save.exists()  # nothing trained, nothing written


def test_skip_bad_images_leaves_them_out_with_a_warning(broken, tmp_path, capsys):
    save = tmp_path / "ck.pt"
    cli.main(train_args(broken["csv"], broken["images"], save, "--skip-bad-images"))
    err = capsys.readouterr().err
    assert "leaving out 2 bad image(s)" in err and torch.load(save, weights_only=True)["progress"]["mask"]["epoch"] == 1


def test_infer_and_evaluate_list_the_images_they_skipped(broken, trained64, tmp_path):
    from roi_consistency.evaluation.evaluate import evaluate_checkpoint
    from roi_consistency.infer import infer_csv
    preds = infer_csv(str(trained64), str(broken["csv"]), str(broken["images"]), str(tmp_path / "p.json"),
                      workers=0, progress=False, skip_bad=True)
    assert preds["skipped_images"] == sorted([broken["missing"], broken["truncated"]])
    assert len(preds["predictions"]) == sum(1 for _ in open(broken["csv"])) - 3
    m = evaluate_checkpoint(str(trained64), str(broken["csv"]), str(broken["images"]), out_dir=str(tmp_path / "e"),
                            keep_ratios=(0.1,), n_examples=0, workers=0, progress=False, skip_bad_images=True)
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["skipped_images"] == m["skipped_images"]
    with pytest.raises(UserError, match="2 bad image"):
        infer_csv(str(trained64), str(broken["csv"]), str(broken["images"]), str(tmp_path / "q.json"), workers=0,
                  progress=False)


def test_an_image_name_that_leaves_the_image_root_is_refused_naming_the_row(phantom64, tmp_path, capsys):
    csv = tmp_path / "evil.csv"
    csv.write_text("image,labels\n00000001_000.png,Normal\n../../etc/passwd,Mass\n")
    with pytest.raises(SystemExit):
        cli.main(train_args(csv, phantom64["images"], tmp_path / "ck.pt"))
    err = capsys.readouterr().err
    assert f"{csv} line 3" in err and "'../../etc/passwd' leaves --image-root" in err
    csv.write_text("image,labels\n/etc/passwd,Mass\n")
    with pytest.raises(SystemExit):
        cli.main(train_args(csv, phantom64["images"], tmp_path / "ck.pt"))
    assert "line 2" in capsys.readouterr().err


def test_a_junk_checkpoint_and_one_with_pickled_code_are_refused_in_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 4)
    torch.save({"format": "roi-consistency/2", "x": Path("/")}, tmp_path / "pickled.pt")  # a pickled object
    for path, want in ((junk, "is not a checkpoint"), (tmp_path / "pickled.pt", "holds pickled objects")):
        with pytest.raises(SystemExit):
            cli.main(["infer", "--checkpoint", str(path), "--csv", "x.csv"])
        err = "\n".join(error_lines(capsys.readouterr().err))
        assert len(err.splitlines()) == 1 and str(path) in err and want in err, err


def test_a_full_disk_during_a_checkpoint_write_is_a_clear_error_and_keeps_the_previous_one(trained64, tmp_path,
                                                                                           monkeypatch):
    from roi_consistency.files import checkpoint
    target = tmp_path / "ck.pt"
    shutil.copy(trained64, target)
    before = target.read_bytes()

    def full_disk(obj, f, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(UserError, match=r"could not write .*ck.pt: No space left on device.*unchanged"):
        checkpoint.save_checkpoint({"x": 1}, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
    write_json(tmp_path / "m.json", {"a": 1})
    monkeypatch.setattr(Path, "write_text", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(UserError, match="m.json"):
        write_json(tmp_path / "m.json", {"a": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}


def test_a_bad_image_in_a_loader_worker_is_one_line(phantom64, tmp_path):
    """A file that breaks after the check, read by a worker process: the run stops with the worker's own
    message, not its traceback."""
    from roi_consistency.cli import user_message
    try:
        raise UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File ...\nroi_consistency.errors.UserError: image a.png could not be decoded")
    except UserError as exc:
        assert user_message(exc) == "image a.png could not be decoded"
    run = subprocess.run([sys.executable, "-m", "roi_consistency", "infer", "--checkpoint", str(tmp_path / "no.pt"),
                          "--csv", "x.csv"], capture_output=True, text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1


def corrupt(path: Path) -> None:
    """Garble a PNG's pixel data but keep its header and end: it passes the pre-flight check, and fails
    only when it is decoded."""
    data = bytearray(path.read_bytes())
    at = data.find(b"IDAT") + 20
    data[at:at + 40] = bytes(b ^ 0xFF for b in data[at:at + 40])
    path.unlink()  # the fixture's images are copies, but never write through a link
    path.write_bytes(bytes(data))


@pytest.fixture
def corrupted(phantom64, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(phantom64["images"], images)
    name = open(phantom64["val"]).read().splitlines()[5].split(",")[0]
    return {"images": images, "csv": phantom64["val"], "name": name}


def test_an_image_that_breaks_mid_run_stops_it_cleanly_or_is_skipped(corrupted, tmp_path):
    save, env = tmp_path / "ck.pt", dict(__import__("os").environ, PYTHONPATH=str(ROOT / "src"))

    def train(*extra):
        return subprocess.run([sys.executable, "-m", "roi_consistency",
                               *train_args(corrupted["csv"], corrupted["images"], save, "--workers", "1", *extra)],
                              capture_output=True, text=True, env=env, timeout=300)
    assert train("--mask-epochs", "0").returncode == 0
    before = save.read_bytes()
    corrupt(corrupted["images"] / corrupted["name"])
    run = train("--mask-epochs", "0", "--resume", "--epochs", "2")  # the bad image is read in epoch 2
    errors = [ln for ln in error_lines(run.stderr) if "%|" not in ln]
    assert run.returncode == 2 and len(errors) == 1, run.stderr[-2000:]
    assert corrupted["name"] in errors[0] and "could not be decoded" in errors[0]
    assert save.read_bytes() == before  # the last checkpoint is intact
    run = train("--mask-epochs", "0", "--resume", "--epochs", "2", "--skip-bad-images")
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"skipping bad image {corrupted['name']}" in run.stderr
    assert torch.load(save, weights_only=True)["progress"]["classifier"]["epoch"] == 2


def test_infer_and_evaluate_leave_out_an_image_that_breaks_mid_run(corrupted, trained64, tmp_path):
    from roi_consistency.evaluation.evaluate import evaluate_checkpoint
    from roi_consistency.infer import infer_csv
    corrupt(corrupted["images"] / corrupted["name"])
    n = sum(1 for _ in open(corrupted["csv"])) - 1
    preds = infer_csv(str(trained64), str(corrupted["csv"]), str(corrupted["images"]), str(tmp_path / "p.json"),
                      workers=0, progress=False, skip_bad=True)
    assert preds["skipped_images"] == [corrupted["name"]] and len(preds["predictions"]) == n - 1
    assert corrupted["name"] not in {p["image"] for p in preds["predictions"]}
    m = evaluate_checkpoint(str(trained64), str(corrupted["csv"]), str(corrupted["images"]), out_dir=str(tmp_path),
                            keep_ratios=(0.1,), n_examples=0, workers=0, progress=False, skip_bad_images=True)
    assert m["skipped_images"] == [corrupted["name"]] and m["n_images"] == n - 1
    assert m["mean_auroc"]["full"] is not None and m["faithfulness"]["learned"]["comprehensiveness"]["0.1"] is not None
    with pytest.raises(UserError, match=f"{corrupted['name']} could not be decoded"):
        infer_csv(str(trained64), str(corrupted["csv"]), str(corrupted["images"]), str(tmp_path / "q.json"),
                  workers=0, progress=False)
