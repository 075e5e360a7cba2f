"""The 14 NIH ChestX-ray14 findings in canonical order, and label-string parsing.

`Normal` is not a class: it is the all-negative label vector. The canonical order is the one NIH
publishes and every checkpoint stores, so output index i always means FINDINGS[i].
"""
from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NORMAL = "Normal"
NO_FINDING = "No Finding"  # how Data_Entry_2017.csv spells a normal image
# BBox_List_2017.csv spells one finding differently from the labels file.
ALIASES = {"Infiltrate": "Infiltration"}
_INDEX = {name: i for i, name in enumerate(FINDINGS)}


class LabelError(ValueError):
    """An unknown finding name; the message names it and lists the valid ones."""


def canonical(name: str) -> str:
    """Return the canonical spelling of one finding name, or raise LabelError."""
    name = ALIASES.get(name.strip(), name.strip())
    if name not in _INDEX:
        raise LabelError(f"unknown finding {name!r}; expected one of: {', '.join(FINDINGS)}")
    return name


def parse_labels(text: str) -> list[str]:
    """Parse 'Effusion|Mass', 'No Finding' or 'Normal' into canonical-order finding names."""
    text = text.strip()
    if text in ("", NO_FINDING, NORMAL):
        return []
    names = {canonical(part) for part in text.split("|") if part.strip()}
    return sorted(names, key=_INDEX.__getitem__)


def format_labels(names: list[str] | tuple[str, ...]) -> str:
    """Join findings with '|' in canonical order; 'Normal' when there are none."""
    if not names:
        return NORMAL
    return "|".join(sorted({canonical(n) for n in names}, key=_INDEX.__getitem__))


def to_vector(names: list[str]) -> list[float]:
    """Multi-hot vector over FINDINGS."""
    vec = [0.0] * len(FINDINGS)
    for n in names:
        vec[_INDEX[canonical(n)]] = 1.0
    return vec


def index(name: str) -> int:
    return _INDEX[canonical(name)]
