"""A dry run of `make-csv --dataset NAME` at real scale on the real metadata, without the images.

The torchxrayvision wheel ships the label files of CheXpert, PadChest, VinDr-CXR, RSNA, SIIM and the Google
NIH relabels in torchxrayvision/data/. This lays each out as its public copy under WORK, with an empty
placeholder file for every film it lists (SIIM's films are DICOM headers claiming 1024 x 1024 pixels, which
is what its masks are decoded at), runs make-csv on each and prints the counts and times.

    pip download torchxrayvision==1.5.7 --no-deps -d /tmp/xrv && unzip -q /tmp/xrv/*.whl -d /tmp/xrv/w
    python benchmarks/datasets_dry_run.py /tmp/xrv/w/torchxrayvision/data /tmp/dry
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import shutil
import time
import zipfile
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from roi_consistency.data.sources import make_csv

PADCHEST = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"


def unpacked(src: Path) -> str:
    if src.suffix == ".gz":
        return gzip.open(src, "rt", newline="").read()
    if src.suffix == ".zip":
        with zipfile.ZipFile(src) as z:
            return z.read(z.namelist()[0]).decode()
    return src.read_text()


def dicom_header(path: Path, rows: int = 1024, cols: int = 1024) -> None:
    """A DICOM file with a header and no pixels: enough to tell a film's size."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(path, enforce_file_format=True)


# dataset: (the wheel's file, where its public copy keeps it, the film each row names)
LAYOUTS = {
    "nih-google": ("google2019_nih-chest-xray-labels.csv.gz", "google2019_nih-chest-xray-labels.csv",
                   lambda r: f"images/{r['Image Index']}"),
    "chexpert": ("chexpert_train.csv.gz", "CheXpert-v1.0-small/train.csv", lambda r: r["Path"]),
    "padchest": (f"{PADCHEST}.gz", PADCHEST, lambda r: f"{r['ImageDir']}/{r['ImageID']}"),
    "vindr": ("vinbigdata-train.csv.gz", "train.csv", lambda r: f"train/{r['image_id']}.dicom"),
    "rsna": ("kaggle_stage_2_train_labels.csv.zip", "stage_2_train_labels.csv",
             lambda r: f"stage_2_train_images/{r['patientId']}.dcm"),
    "siim": ("siim-pneumothorax-train-rle.csv.gz", "train-rle.csv",
             lambda r: f"dicom-images-train/{r['ImageId']}/series/{r['ImageId']}.dcm"),
}


def layout(name: str, data: Path, root: Path) -> None:
    """The dataset's metadata and a placeholder per film, as its public copy lays them out."""
    wheel_file, kept_as, film = LAYOUTS[name]
    text = unpacked(data / wheel_file)
    (root / kept_as).parent.mkdir(parents=True, exist_ok=True)
    (root / kept_as).write_text(text)
    reader = csv.DictReader(io.StringIO(text))
    reader.fieldnames = [f.strip() for f in reader.fieldnames]  # SIIM's header has a space
    for path in {film(r) for r in reader}:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        if name == "siim":  # its masks are decoded at the film's size, which the header tells
            dicom_header(root / path)
        else:
            (root / path).touch()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="torchxrayvision/data from the unpacked wheel")
    ap.add_argument("work", type=Path, help="an empty folder for the layouts (placeholders: a few MB)")
    ap.add_argument("--only", nargs="*", help="these datasets only")
    a = ap.parse_args()
    print(f"{'dataset':12s} {'films':>9s} {'patients':>9s} {'positive':>9s} {'boxes':>7s} {'boxed':>7s} "
          f"{'layout s':>9s} {'make-csv s':>10s}  split")
    for name in a.only or ("nih-google", "chexpert", "padchest", "vindr", "rsna", "siim"):
        root = a.work / name
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        layout(name, a.data, root)
        t1 = time.perf_counter()
        s = make_csv(name, str(root), str(a.work / f"{name}-csv"), seed=0)
        t2 = time.perf_counter()
        films = sum(s[k]["rows"] for k in ("train", "val", "test"))
        positive = films - sum(s[k]["normal"] for k in ("train", "val", "test"))
        patients = sum(s[k]["patients"] for k in ("train", "val", "test"))
        print(f"{name:12s} {films:9,d} {patients:9,d} {positive:9,d} {s['boxes']:7,d} {s['boxed_films']:7,d} "
              f"{t1 - t0:9.1f} {t2 - t1:10.1f}  {s['split']}; rows train/val/test "
              f"{s['train']['rows']:,}/{s['val']['rows']:,}/{s['test']['rows']:,}", flush=True)


if __name__ == "__main__":
    main()
