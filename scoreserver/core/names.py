"""Player names: one spelling per name, nothing invisible, no look-alikes of another player.

A name is normalised to Unicode NFKC (so fullwidth `ｓｔａｒ` is `star`), trimmed, and its runs
of spaces folded to one. It is refused if it holds a character a reader cannot see: controls,
format characters (U+200B and friends), unassigned or private-use code points, line breaks,
and every Default_Ignorable_Code_Point (U+3164 HANGUL FILLER, U+034F COMBINING GRAPHEME
JOINER, variation selectors, ...), or if it starts with a combining mark.

Two names that a reader could take for one another are one name: each has a *skeleton*, as
Unicode Technical Standard #39 defines it (section 4: NFD, each character replaced by its
prototype from Unicode's confusables.txt, NFD again), computed so that it depends only on the
case-folded name (see `skeleton`), and the database keeps skeletons unique. So `stаr` with a
Cyrillic а, `STAR`, `ѕtar` and `АLICE` against `alice` all collide.

The confusables data is Unicode's own `confusables.txt` at a stated version
(`CONFUSABLES_VERSION`), shipped unmodified in `core/data/` with its licence. The
Default_Ignorable ranges below are copied from Unicode's DerivedCoreProperties.txt (Unicode
15.1): Python's `unicodedata` does not expose that property.

Stored skeletons stay valid when Python (and with it `unicodedata`) is upgraded: a name is
accepted only if every character is assigned in the running Python's Unicode, and Unicode's
stability policies keep the normalization and case folding of assigned characters unchanged
in later versions; the confusables data moves only with this file's version (a change of it
is a schema upgrade that rekeys every name, as schema 5 did). `tests/unit/test_names.py`
pins the skeletons of a sample.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import unicodedata

NAME_MAX = 32
# The version of Unicode's confusables.txt in core/data (UTS #39 security data).
CONFUSABLES_VERSION = "13.0.0"

# Default_Ignorable_Code_Point, from DerivedCoreProperties.txt.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
# Blank but not default-ignorable: the braille blank and the Hangul/halfwidth fillers' kin.
_BLANK = frozenset({0x2800, 0x3000, 0x1D159})
# General categories nobody can see or type on purpose in a name.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_SPACES = re.compile(r"\s+")


class InvalidName(ValueError):
    """A name that cannot be used (the message says why)."""


def _default_ignorable(code: int) -> bool:
    return any(low <= code <= high for low, high in _DEFAULT_IGNORABLE)


def normalize_name(raw: str) -> str:
    """The one spelling of `raw` that is stored and shown; ValueError if it cannot be a name."""
    name = _SPACES.sub(" ", unicodedata.normalize("NFKC", raw)).strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise InvalidName(f"a name is 1 to {NAME_MAX} characters")
    for char in name:
        code = ord(char)
        if (
            unicodedata.category(char) in _REFUSED_CATEGORIES
            or _default_ignorable(code)
            or code in _BLANK
            or (char.isspace() and char != " ")
        ):
            raise InvalidName(f"a name cannot hold the invisible character U+{code:04X}")
    if unicodedata.category(name[0]).startswith("M"):
        raise InvalidName("a name cannot start with a combining mark")
    return name


def fold(name: str) -> str:
    """A name in the one form names are compared in, on both engines: NFKC, then Unicode's
    full case folding (so `ZOË` is `zoë` and `STRASSE` is `straße`, which SQLite's NOCASE,
    ASCII only, and PostgreSQL's lower() do not agree on)."""
    return unicodedata.normalize("NFKC", name).casefold()


@functools.cache
def _prototypes() -> dict[str, str]:
    """Unicode's confusables.txt as a map from each source character to its prototype."""
    text = (importlib.resources.files(__package__) / "data" / "confusables.txt").read_text(
        encoding="utf-8-sig"
    )
    if f"# Version: {CONFUSABLES_VERSION}\n" not in text[:1000]:
        raise RuntimeError(f"core/data/confusables.txt is not version {CONFUSABLES_VERSION}")
    table: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        source, target, *_ = (field.strip() for field in line.split(";"))
        table[chr(int(source, 16))] = "".join(chr(int(c, 16)) for c in target.split())
    return table


def _tr39(text: str) -> str:
    table = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(table.get(char, char) for char in decomposed))


def skeleton(name: str) -> str:
    """The TR39 skeleton, made case-insensitive: equal skeletons look alike in some case.

    Names are one name in any case, so the skeleton depends only on the case-folded name, and
    look-alikes are judged in both cases a board may show: the lower-case letters are first
    replaced by their Latin prototypes (Cyrillic `а` and `р`, `m` as `rn`), then the name is
    put in upper case and mapped again (Cyrillic `М`, `Т` and `Н`, whose small forms look like
    no Latin small letter; `I` as `l`), then folded and mapped once more. So `alice`,
    `ALICE`, `АLICE` (Cyrillic А) and `aIice` are one name. Mapping the name as typed, before
    folding, would not be: `I` maps to `l` but `i` to nothing, so `ALICE` and `alice` would
    differ.
    """
    table = _prototypes()
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", name).casefold())
    latin = "".join(_latin_prototype(table, char) for char in folded)
    return _tr39(_tr39(latin.upper()).casefold())


def _latin_prototype(table: dict[str, str], char: str) -> str:
    """`char`'s prototype where it is Latin (ASCII); otherwise `char`, left for the upper-case
    pass (Cyrillic `м` maps to `ʍ`, which has no capital, while `М` maps to `M`)."""
    prototype = table.get(char)
    return prototype if prototype is not None and prototype.isascii() else char
