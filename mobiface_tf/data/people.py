"""People by name, across datasets: one spelling rule, a names-file reader, and exclusion from training data.

Benchmarks spell the same person differently: LFW folders use underscores (`Leonardo_DiCaprio`), CFP's
`Data/list_name.txt` uses spaces and its own capitals (`Leonardo Dicaprio`), and a file copied between systems
may hold the decomposed Unicode form of an accent. `canonical_name` maps all of these to one key, so a training
set can leave out exactly the people a benchmark scores it on (a model must never be tested on people it was
trained on). By that rule 176 of CFP's 500 people are LFW people (172 when the case must match too).

    >>> canonical_name("Leonardo Dicaprio") == canonical_name("Leonardo_DiCaprio")
    True
"""
from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Iterable, NamedTuple


def canonical_name(name: str) -> str:
    """The comparison key of a person's name: Unicode NFC, case-folded, with every run of spaces and underscores
    (and surrounding whitespace) turned into one underscore. Other punctuation (`O'Neal`, `Jay-Z`, `Jr.`) is kept:
    it distinguishes names. Raises TypeError for a non-string."""
    if not isinstance(name, str):
        raise TypeError(f"a name must be a str, got {type(name).__name__}")
    text = unicodedata.normalize("NFC", name).casefold()
    return "_".join(text.replace("_", " ").split())


def read_names_file(path) -> set[str]:
    """The canonical names (`canonical_name`) listed in a text file, one person per line.

    Blank lines and lines starting with `#` are ignored; a UTF-8 byte-order mark and CRLF line ends are accepted.
    Accepts CFP's `Data/list_name.txt` (names with spaces) or a list of LFW folder names (underscores).
    Raises FileNotFoundError when the file is missing, ValueError when it is not UTF-8 text or names nobody.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"names file not found: {str(path)!r}; pass a text file with one person per line, "
                                "e.g. cfp/Data/list_name.txt")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"names file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    names = {canonical_name(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}
    if not names:
        raise ValueError(f"names file {str(path)!r} names nobody (expected one person per line)")
    return names


class Exclusion(NamedTuple):
    """What `exclude` decided: indices of the kept class names, and the class names left out (in input order)."""

    keep: list[int]
    excluded: list[str]


def exclude(class_names: Iterable[str], names: Iterable[str]) -> Exclusion:
    """Split `class_names` (identity folder names, e.g. LFW's `Tom_Hanks`) by whether the person is in `names`.

    Both sides are compared by `canonical_name`, so `names` may be raw lines (`Tom Hanks`) or the set
    `read_names_file` returns. Returns Exclusion(keep=[indices kept], excluded=[class names left out]).
    """
    wanted = {canonical_name(n) for n in names}
    keep, excluded = [], []
    for i, name in enumerate(class_names):
        if canonical_name(name) in wanted:
            excluded.append(name)
        else:
            keep.append(i)
    return Exclusion(keep, excluded)
