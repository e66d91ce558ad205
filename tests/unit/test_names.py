"""The skeletons of stored names must not drift: a sample pinned against the shipped
confusables data (core/data, CONFUSABLES_VERSION) and the normalization and case folding of
assigned characters, which Unicode's stability policies keep across Python upgrades."""

from __future__ import annotations

import importlib.resources
import unicodedata

import pytest

from scoreserver.core import names
from scoreserver.core.names import CONFUSABLES_VERSION, InvalidName, normalize_name, skeleton

# Computed once on Python 3.11 (unicodedata 14.0.0) with confusables.txt 13.0.0, and kept:
# a change here is a change of every stored key (a schema upgrade that rekeys names).
PINNED = {
    "alice": "allce",
    "\u0410LICE": "allce",  # Cyrillic А
    "Ian": "lan",
    "\uff53\uff54\uff41\uff52": "star",  # fullwidth
    "\u0455tar": "star",  # Cyrillic ѕ
    "rnila": "rnlla",
    "Zo\u00eb": "zoe\u0308",
    "\u03a9mega": "\u03c9rnega",
    "\u674e\u5c0f\u9f8d": "\u674e\u5c0f\u9f8d",
    "\u216b": "xll",  # ROMAN NUMERAL TWELVE
    "\ufb01re": "flre",  # the fi ligature
    "stra\u00dfe": "strasse",
    "\u0130stanbul": "l\u0307stanbul",
}


@pytest.mark.parametrize(("name", "expected"), PINNED.items())
def test_the_skeletons_of_a_sample_are_pinned(name: str, expected: str) -> None:
    assert skeleton(name) == expected


def test_the_confusables_data_is_the_stated_version_shipped_with_its_licence() -> None:
    assert CONFUSABLES_VERSION == "13.0.0"
    data = importlib.resources.files("scoreserver.core") / "data"
    assert f"# Version: {CONFUSABLES_VERSION}" in (data / "confusables.txt").read_text("utf-8-sig")
    assert "UNICODE, INC. LICENSE AGREEMENT" in (data / "UNICODE-LICENSE.txt").read_text("utf-8")
    assert names._prototypes()["\u0430"] == "a"  # Cyrillic а, read from the shipped file


def test_characters_this_python_does_not_assign_are_refused() -> None:
    """What makes a stored skeleton stable: only assigned characters are ever keyed."""
    unassigned = next(
        chr(code) for code in range(0x0378, 0x10FFFF) if unicodedata.category(chr(code)) == "Cn"
    )
    with pytest.raises(InvalidName):
        normalize_name("ann" + unassigned)
