import argparse

import numpy as np
import pytest

from roi_consistency.data.dataset import read_label_csv
from roi_consistency.data.labels import FINDINGS, LabelError, classes_in, format_labels, parse_labels, split_labels
from roi_consistency.errors import UserError
from roi_consistency.flags import findings


def test_canonical_order_is_fixed():
    assert len(FINDINGS) == 14
    assert FINDINGS[0] == "Atelectasis" and FINDINGS[-1] == "Hernia"
    assert FINDINGS.index("Pleural_Thickening") == 12


def test_parse_sorts_canonically_and_dedups():
    assert parse_labels("Nodule|Effusion|Nodule") == ["Effusion", "Nodule"]
    assert parse_labels(" Hernia ") == ["Hernia"]


@pytest.mark.parametrize("text", ["No Finding", "Normal", ""])
def test_normal_is_empty(text):
    assert parse_labels(text) == [] == split_labels(text)
    assert format_labels([]) == "Normal"


def test_bbox_spelling_alias():
    assert parse_labels("Infiltrate") == ["Infiltration"] == split_labels("Infiltrate")


def test_an_nih_label_string_refuses_a_finding_nih_does_not_have():
    with pytest.raises(LabelError, match="Pneumonitis"):
        parse_labels("Effusion|Pneumonitis")


def test_format_round_trip():
    assert format_labels(["Mass", "Cardiomegaly"]) == "Cardiomegaly|Mass"
    assert parse_labels(format_labels(["Mass", "Cardiomegaly"])) == ["Cardiomegaly", "Mass"]


def test_no_finding_together_with_findings_is_refused():
    with pytest.raises(LabelError, match="'No Finding' together with findings"):
        split_labels("No Finding|Effusion")


def test_any_dataset_names_its_own_findings_in_the_order_given():
    assert split_labels("Pleural effusion| Nodule/Mass |Pleural effusion") == ["Pleural effusion", "Nodule/Mass"]
    for bad in ("Effusion|a,b", "Effusion|tab\there", "x" * 101):
        with pytest.raises(LabelError, match="comma or control character"):
            split_labels(bad)


def write(path, text):
    path.write_text(text)
    return path


def test_a_csv_of_nih_findings_learns_nih_14_and_any_other_names_alphabetically(tmp_path):
    nih = write(tmp_path / "nih.csv", "image,labels\na.png,Mass\nb.png,Normal\n")
    assert classes_in(nih) == list(FINDINGS)  # a subset still learns all 14, in NIH's order
    other = write(tmp_path / "vindr.csv", "image,labels,unknown\na.dicom,Pleural effusion|Nodule/Mass,\n"
                                          "b.dicom,No Finding,Aortic enlargement\nc.dicom,Atelectasis,\n")
    assert classes_in(other) == ["Aortic enlargement", "Atelectasis", "Nodule/Mass", "Pleural effusion"]


@pytest.mark.parametrize("text, message", [
    ("a.png,Effusion\nb.png,Efusion\n", "line 3: unknown finding 'Efusion' among NIH findings; did you mean 'Eff"),
    ("a.png,Mass\nb.png,pleural thickening\n", "did you mean 'Pleural_Thickening'"),
    ("a.png,Lung Opacity\nb.png,lung_opacity\n", "line 3: finding 'lung_opacity' and 'Lung Opacity' .line 2. differ"),
    ("a.png,Normal\n", "no finding is named"),
])
def test_a_misspelt_or_missing_finding_is_one_line_naming_it(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        classes_in(write(tmp_path / "t.csv", "image,labels\n" + text))


def test_a_misspelling_rule_leaves_a_dataset_of_its_own_names_alone(tmp_path):
    # VinDr mixes NIH names with its own, some of them near NIH's: not a CSV of NIH findings with a typo
    p = write(tmp_path / "v.csv", "image,labels\na,Atelectasis\nb,Pleural thickening\nc,Aortic enlargement\n")
    assert classes_in(p) == ["Aortic enlargement", "Atelectasis", "Pleural thickening"]


def test_unknown_findings_read_as_nan_and_names_outside_the_classes_are_not_read(tmp_path):
    p = write(tmp_path / "t.csv", "image,labels,unknown\na,Edema|Fracture,Pneumonia\nb,Normal,Edema|Pneumonia\nc,,\n")
    names, y, m = read_label_csv(p, ["Edema", "Pneumonia"])
    assert names == ["a", "b", "c"] and m.unscored == ["Fracture"] and not m.unlabelled and not m.renamed()
    np.testing.assert_array_equal(y, [[1, np.nan], [np.nan, np.nan], [0, 0]])


def test_a_finding_both_labelled_and_unknown_is_refused_by_line(tmp_path):
    p = write(tmp_path / "t.csv", "image,labels,unknown\na,Edema,\nb,Edema|Mass,Edema\n")
    with pytest.raises(UserError, match="t.csv line 3: 'Edema' is in both the labels and the unknown column"):
        read_label_csv(p, ["Edema"])


def test_the_classes_flag_lists_each_name_once():
    assert findings("Edema, Pleural effusion") == ["Edema", "Pleural effusion"]
    for bad, message in (("Edema,Edema", "listed twice"), ("Edema,edema", "listed twice"), ("Edema,,Mass", "is empty")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            findings(bad)
