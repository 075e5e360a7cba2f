"""`make-csv --dataset NAME`: one module per public dataset, each reading its public copy's layout.

Every module has the same parts: SOURCE (where to get it, in a few lines), KAGGLE (its Kaggle copy, for
`download --dataset NAME`, or None) and `read(root, options) -> (films, boxes)`, with the dataset's own
finding names. films.py splits, checks and writes them the same way
for all:

- chexpert.py: CheXpert-v1.0-small, frontal films, --uncertain for its -1 labels;
- nih_google.py: Google's adjudicated labels of four findings on NIH films, a cleaner NIH test set;
- padchest.py: PadChest's frontal films and its report labels;
- rsna.py: RSNA Pneumonia Detection's Kaggle copy, a box per opacity;
- siim.py: SIIM-ACR Pneumothorax, masks decoded from its run-length code, and their boxes;
- vindr.py: VinDr-CXR's Kaggle copy, the readers' majority as labels, every reader's box.

NIH ChestX-ray14 keeps its own module (data/nih.py), which also downloads and unifies it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from roi_consistency.data.kaggle import fetch
from roi_consistency.data.sources import chexpert, nih_google, padchest, rsna, siim, vindr
from roi_consistency.data.sources.films import Options, format_summary, write_dataset
from roi_consistency.errors import UserError

SOURCES = {"nih-google": nih_google, "chexpert": chexpert, "padchest": padchest, "vindr": vindr, "rsna": rsna,
           "siim": siim}
__all__ = ["SOURCES", "Options", "download", "format_summary", "make_csv"]


def download(name: str, dest: str | None = None, copy: bool = False) -> Path:
    """The dataset's Kaggle copy through kagglehub; for a dataset that has none, an error saying where to get
    it and which folder to give as --data-root."""
    module = SOURCES[name]
    if module.KAGGLE is None:
        raise UserError(f"{name} is not downloaded by this tool. {module.SOURCE}")
    kind, handle = module.KAGGLE
    return fetch(kind, handle, name, module.SOURCE, dest, copy)


def make_csv(name: str, data_root: str, out_dir: str = ".", val_fraction: float = 0.1, test_fraction: float = 0.2,
             seed: int = 0, skip_missing: bool = False, options: Options | None = None) -> dict:
    """Write NAME_{train,val,test}.csv (and NAME_boxes.csv where the dataset has boxes) into out_dir, with
    image paths relative to data_root; return the summary."""
    films, boxes = SOURCES[name].read(Path(data_root), replace(options or Options(), out_dir=out_dir))
    return write_dataset(name, films, boxes, data_root, out_dir, val_fraction, test_fraction, seed, skip_missing)
