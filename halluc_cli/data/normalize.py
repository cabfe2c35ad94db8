"""Text normalization shared by KB lookup and answer matching.

Both sides of every comparison (a KB subject and a user's query, a gold answer and a
model's prediction) go through `normalize_text`, so the rules only need to be consistent,
not linguistically perfect. They follow the SQuAD answer normalization, plus accent
folding so that "Brasília" and "Brasilia" match.
"""

from __future__ import annotations

import unicodedata

ARTICLES = frozenset({"a", "an", "the"})

# Latin letters that NFKD leaves whole (no combining mark to strip), folded by hand so
# that "Łódź" matches "Lodz" and "Ørsted" matches "Orsted". Lowercase only: we casefold first.
_LATIN_FOLDS = {
    "ł": "l", "ø": "o", "æ": "ae", "œ": "oe", "đ": "d", "ð": "d", "þ": "th", "ħ": "h", "ı": "i",
}


class _CharMap(dict):
    """A `str.translate` table filled lazily, one code point at a time.

    Building the full table up front means asking for the category of all 1.1M code
    points at import time (~0.5 s); texts use a few hundred distinct characters, so we
    classify each one on first sight and let the C-level dict lookup serve the rest.
    """

    def __missing__(self, codepoint: int) -> str | None:
        category = unicodedata.category(chr(codepoint))
        if category in ("Mn", "Cf"):  # accents and other nonspacing marks, zero-width chars
            value = None  # delete
        elif category[0] in ("P", "S", "Z", "C"):  # punctuation, symbols, separators, controls
            value = " "
        else:  # letters, digits and spacing marks of any script stay
            value = chr(codepoint)
        self[codepoint] = value
        return value


_CHAR_MAP = _CharMap({ord(k): v for k, v in _LATIN_FOLDS.items()})


def normalize_text(s: str) -> str:
    """Normalize `s` for comparison: "The  Brasília!" -> "brasilia".

    Steps: casefold, Unicode NFKD, drop combining marks (accents) and fold the few Latin
    letters without a decomposition (ł, ø, æ...), replace punctuation,
    symbols and odd whitespace with spaces, drop the English articles a/an/the as whole
    words, collapse runs of whitespace and strip. Letters and digits of every script are
    kept, so non-Latin answers still compare equal to themselves.
    """
    s = s.casefold()
    if not s.isascii():  # NFKD is the slow step and a no-op on ASCII
        s = unicodedata.normalize("NFKD", s)
    words = s.translate(_CHAR_MAP).split()
    return " ".join(w for w in words if w not in ARTICLES)
