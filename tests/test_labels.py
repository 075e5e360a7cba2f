import pytest

from roi_consistency.data.labels import FINDINGS, LabelError, format_labels, parse_labels, to_vector


def test_canonical_order_is_fixed():
    assert len(FINDINGS) == 14
    assert FINDINGS[0] == "Atelectasis" and FINDINGS[-1] == "Hernia"
    assert FINDINGS.index("Pleural_Thickening") == 12


def test_parse_sorts_canonically_and_dedups():
    assert parse_labels("Nodule|Effusion|Nodule") == ["Effusion", "Nodule"]
    assert parse_labels(" Hernia ") == ["Hernia"]


@pytest.mark.parametrize("text", ["No Finding", "Normal", ""])
def test_normal_is_empty(text):
    assert parse_labels(text) == []
    assert format_labels([]) == "Normal"


def test_bbox_spelling_alias():
    assert parse_labels("Infiltrate") == ["Infiltration"]


def test_unknown_finding_is_rejected_by_name():
    with pytest.raises(LabelError, match="Pneumonitis"):
        parse_labels("Effusion|Pneumonitis")


def test_format_round_trip_and_vector():
    assert format_labels(["Mass", "Cardiomegaly"]) == "Cardiomegaly|Mass"
    assert parse_labels(format_labels(["Mass", "Cardiomegaly"])) == ["Cardiomegaly", "Mass"]
    v = to_vector(["Mass", "Hernia"])
    assert v[FINDINGS.index("Mass")] == 1.0 and v[13] == 1.0 and sum(v) == 2.0
