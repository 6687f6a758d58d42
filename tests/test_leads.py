"""Lead-name conventions."""

import pytest
from ecg_hub.modeling.leads import STANDARD_LEADS, canonical_lead_name, canonicalize_leads


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [("AVR", "aVR"), ("avr", "aVR"), ("aVL", "aVL"), ("AVF", "aVF"), ("DI", "I"), ("DII", "II"),
     ("DIII", "III"), ("i", "I"), ("iii", "III"), ("v1", "V1"), (" V6 ", "V6"), ("MLII", "II")],
)
def test_accepted_spellings(spelling, canonical):
    assert canonical_lead_name(spelling) == canonical


def test_standard_order_is_clinical_order():
    assert STANDARD_LEADS == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    assert canonicalize_leads([n.upper() for n in STANDARD_LEADS]) == list(STANDARD_LEADS)


def test_unknown_and_repeated_leads_are_errors():
    with pytest.raises(ValueError, match="unknown lead name 'vx'"):
        canonical_lead_name("vx")
    with pytest.raises(ValueError, match="appears twice"):
        canonicalize_leads(["I", "DI"])
