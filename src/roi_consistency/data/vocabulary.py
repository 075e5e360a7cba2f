"""The common vocabulary: which finding names of different datasets mean the same finding, so that a model
trained on one dataset is scored on another's labels and boxes.

Names match when they are equal up to case and separators ('Pleural_Thickening' = 'Pleural thickening'),
or through SYNONYMS, the spellings that differ in words (torchxrayvision's dataset classes were the
reference). A model's 'Nodule/Mass' is positive where a film has a nodule or a mass, so the dataset's
Nodule and Mass labels are both read as it (PARTS). The other way round, a model that scores Nodule and Mass
apart meets a dataset's one 'Nodule/Mass' label only in evaluation (`match(..., join=True)`): the label is
scored against the higher of the model's two probabilities (ROIModel.join).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# another dataset's spelling -> the common name (both folded)
SYNONYMS = {
    "pleural effusion": "effusion",  # CheXpert, VinDr-CXR, PadChest
    "pulmonary fibrosis": "fibrosis",  # VinDr-CXR, PadChest
    "infiltrate": "infiltration",  # NIH's box list
    "infiltrates": "infiltration",  # PadChest
    "hiatal hernia": "hernia",  # PadChest
    "pulmonary mass": "mass",  # PadChest
    "airspace opacity": "lung opacity",  # the Google relabels of NIH
    "nodule or mass": "nodule/mass",  # the Google relabels of NIH; VinDr-CXR writes Nodule/Mass
}
PARTS = {"nodule/mass": ("nodule", "mass")}  # a model's finding that is positive where any of these is


def folded(name: str) -> str:
    """A finding name without case, and with spaces, '_' and '-' alike."""
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


def common(name: str) -> str:
    """The common name a finding name stands for, folded."""
    return SYNONYMS.get(folded(name), folded(name))


def reads_as(name: str, cls: str) -> bool:
    """Is a dataset's finding `name` read as a model's class `cls`?"""
    return common(name) == common(cls) or common(name) in PARTS.get(common(cls), ())


def class_of(name: str, classes: list[str]) -> str | None:
    """The model class a dataset's finding name is read as (itself first), or None."""
    return name if name in classes else next((c for c in classes if reads_as(name, c)), None)


@dataclass
class Match:
    """How a CSV's finding names are read as a model's classes."""
    reads: dict[str, list[str]] = field(default_factory=dict)  # model class -> the CSV names read as it
    unlabelled: list[str] = field(default_factory=list)  # model classes the CSV never names: unknown on every film
    unscored: list[str] = field(default_factory=list)  # CSV names the model has no class for: not read
    joined: dict[str, list[str]] = field(default_factory=dict)  # CSV name -> the model classes whose highest
    # probability scores it (evaluation only: an extra output column, ROIModel.join)

    def renamed(self) -> dict[str, list[str]]:
        return {c: names for c, names in self.reads.items() if names != [c]}

    def describe(self) -> str:
        """One line: what was read as what, and what was left out."""
        parts = ["; ".join(f"{' + '.join(map(repr, n))} read as {c!r}" for c, n in self.renamed().items())]
        if self.unlabelled:
            parts.append(f"not labelled in the CSV, so unknown: {', '.join(self.unlabelled)}")
        parts += [f"{n!r} scored by the higher probability of {' and '.join(map(repr, cs))}, its map explaining "
                  "the more probable" for n, cs in self.joined.items()]
        if self.unscored:
            parts.append(f"not among the model's findings, so left out: {', '.join(self.unscored)}")
        return "; ".join(p for p in parts if p)

    def as_dict(self) -> dict:
        return {"read_as": self.renamed(), "unlabelled": self.unlabelled, "unscored": self.unscored,
                "joined": self.joined}


def joined_parts(name: str, classes: list[str]) -> list[str] | None:
    """The model classes that together make a dataset's finding `name` ('Nodule/Mass': the model's Nodule and
    Mass), where the model has every part; else None."""
    parts = [next((c for c in classes if common(c) == p), None) for p in PARTS.get(common(name), ())]
    return parts if parts and None not in parts else None


def match(classes: list[str], named: list[str], join: bool = False) -> Match | None:
    """How the names a CSV uses (`named`) are read as the model's `classes`; None where every name is one of
    the classes (the model's own vocabulary: a class the CSV does not name is negative on every film). With
    `join`, a CSV name that the model scores in parts (Nodule/Mass) is joined rather than left out."""
    if set(named) <= set(classes):
        return None
    out = Match()
    for c in classes:
        out.reads[c] = [n for n in named if reads_as(n, c)]
        if not out.reads[c]:
            del out.reads[c]
            out.unlabelled.append(c)
    read = {n for names in out.reads.values() for n in names}
    out.unscored = [n for n in named if n not in read]
    if join:
        out.joined = {n: parts for n in out.unscored if (parts := joined_parts(n, classes))}
        out.unscored = [n for n in out.unscored if n not in out.joined]
    return out


def columns(classes: list[str], m: Match | None) -> list[str]:
    """The label columns of a CSV read through `m`: the model's classes, then the names it joins."""
    return list(classes) + list(m.joined if m else ())
