"""Finding names: NIH ChestX-ray14's 14 in their canonical order, and the label lists of any dataset.

A CSV's `labels` column joins a film's findings with '|' ('Normal' or 'No Finding' when there are none).
Its optional `unknown` column joins the findings the film is not labelled for: CheXpert's uncertain ones,
or a finding its dataset does not label at all. An unknown finding is left out of the loss, AUROC and
calibration, never read as negative. Any names may appear: a model learns the findings its training CSV
names (`classes_in`), or those `train --classes` lists.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from roi_consistency.data.vocabulary import folded
from roi_consistency.errors import UserError
from roi_consistency.files.text import read_table, shown

# NIH's canonical order, in which every NIH checkpoint stores its outputs: index i means FINDINGS[i]
FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NORMAL = "Normal"
NO_FINDING = "No Finding"  # how Data_Entry_2017.csv spells a normal image
# BBox_List_2017.csv spells one finding differently from the labels file.
ALIASES = {"Infiltrate": "Infiltration"}
_INDEX = {name: i for i, name in enumerate(FINDINGS)}
MAX_NAME = 100  # characters: a finding name, not a sentence (it heads columns and report sections)


class LabelError(ValueError):
    """A finding name this tool cannot use; the message names it and says why."""


def canonical(name: str) -> str:
    """Return the canonical spelling of one NIH finding name, or raise LabelError."""
    name = ALIASES.get(name.strip(), name.strip())
    if name not in _INDEX:
        raise LabelError(f"unknown finding {name!r}; expected one of: {', '.join(FINDINGS)}")
    return name


def finding(text: str) -> str:
    """One finding name of any dataset, as it is used: stripped, NIH's box-list alias resolved. A name must
    be printable, at most MAX_NAME characters, without a comma (`--classes` lists names with commas)."""
    name = ALIASES.get(text.strip(), text.strip())
    if not name or len(name) > MAX_NAME or "," in name or not name.isprintable():
        raise LabelError(f"finding name {shown(name)!r} is empty, longer than {MAX_NAME} characters, or holds a comma "
                         "or control character")
    return name


def split_labels(text: str | None) -> list[str]:
    """'Effusion|Mass' -> its names in the order given, each once; '', 'Normal' and 'No Finding' -> []."""
    text = (text or "").strip()
    if text in ("", NO_FINDING, NORMAL):
        return []
    names = list(dict.fromkeys(finding(part) for part in text.split("|") if part.strip()))
    empty = next((n for n in names if n.casefold() in (NO_FINDING.casefold(), NORMAL.casefold())), None)
    if empty:
        raise LabelError(f"{empty!r} together with findings in {shown(text)!r}; a film either has findings or none")
    return names


def parse_labels(text: str) -> list[str]:
    """An NIH label string ('Effusion|Mass', 'No Finding') -> canonical-order NIH finding names."""
    return sorted({canonical(n) for n in split_labels(text)}, key=_INDEX.__getitem__)


def format_labels(names: list[str] | tuple[str, ...]) -> str:
    """Join NIH findings with '|' in canonical order; 'Normal' when there are none."""
    if not names:
        return NORMAL
    return "|".join(sorted({canonical(n) for n in names}, key=_INDEX.__getitem__))


def classes_in(path: str | Path) -> list[str]:
    """The findings a training CSV names, in its labels or unknown column, as a model's output order: NIH's
    14 in their canonical order when every name is NIH's (a phantom or NIH subset still gets all 14),
    else the names in alphabetical order. A name that looks like a misspelling is an error (`misspelt`)."""
    header, records = read_table(path, ("image",))
    first: dict[str, int] = {}  # each name's first line
    for line_no, row in records:
        for column in ("labels", "unknown"):
            try:
                for name in split_labels(row.get(column)):
                    first.setdefault(name, line_no)
            except LabelError as exc:
                raise UserError(f"{path} line {line_no}: {exc}") from None
    if not first:
        raise UserError(f"{path}: no finding is named in its labels column; give the findings to learn with --classes")
    problem = misspelt(first)
    if problem:
        raise UserError(f"{path} {problem}; fix the CSV, or name the findings to learn with --classes")
    return list(FINDINGS) if set(first) <= set(FINDINGS) else sorted(first, key=lambda n: (n.casefold(), n))


def misspelt(first: dict[str, int]) -> str | None:
    """Where names {name: first line} look like one finding spelled two ways, a message saying so: two names
    that differ only in case or separators, or a CSV of NIH findings with a name close to one of them."""
    seen: dict[str, str] = {}
    for name in first:
        other = seen.setdefault(folded(name), name)
        if other != name:
            return (f"line {first[name]}: finding {name!r} and {other!r} (line {first[other]}) differ only in case or "
                    "separators")
    strangers = [n for n in first if n not in _INDEX]
    if len(strangers) < len(first):  # an NIH CSV: are its other names all near-misses of NIH names?
        near = {n: difflib.get_close_matches(folded(n), [folded(f) for f in FINDINGS], 1, 0.8) for n in strangers}
        if strangers and all(near.values()):
            n = strangers[0]
            meant = next(f for f in FINDINGS if folded(f) == near[n][0])
            return f"line {first[n]}: unknown finding {n!r} among NIH findings; did you mean {meant!r}?"
    return None
