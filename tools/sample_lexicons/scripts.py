"""Character inventories of the scripts the tasks use, for the demo vocabulary corpus.

The generated sentences only contain the characters of the lexicons; real text in the same
scripts would hit unk on every other letter. One line per block of characters makes the trainer
(character_coverage=1.0) give every letter, mark, digit and common punctuation mark of these
scripts a piece. For Chinese, Japanese and Korean, whose scripts are too large to include whole,
the common sets are taken from the stdlib codecs: GB2312 level-1 hanzi (3755), JIS X 0208 level-1
kanji (2965) and the KS X 1001 Hangul syllables (2350).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

# (first, last) code points; only letters, marks, digits, punctuation and symbols are kept.
BLOCKS: tuple[tuple[int, int], ...] = (
    (0x0021, 0x007E),  # ASCII printable
    (0x00A1, 0x017F),  # Latin-1 Supplement, Latin Extended-A (Czech, Turkish, ...)
    (0x0180, 0x024F),  # Latin Extended-B
    (0x1EA0, 0x1EF9),  # Latin Extended Additional (Vietnamese)
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x045F),  # Cyrillic (Russian, Bulgarian)
    (0x0600, 0x06FF),  # Arabic, incl. the Urdu letters
    (0x0900, 0x097F),  # Devanagari
    (0x0E01, 0x0E5B),  # Thai
    (0x2010, 0x205E),  # General Punctuation
    (0x20A0, 0x20BF),  # currency signs
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3041, 0x3096),  # Hiragana
    (0x30A1, 0x30FC),  # Katakana
)

# (codec, first lead byte, last lead byte): the common-character rows of the CJK code tables.
CJK_TABLES: tuple[tuple[str, int, int], ...] = (
    ("gb2312", 0xB0, 0xD7),  # GB2312 level 1 hanzi
    ("euc_jp", 0xB0, 0xCF),  # JIS X 0208 level 1 kanji
    ("euc_kr", 0xB0, 0xC8),  # KS X 1001 Hangul syllables
)


def _block_chars(first: int, last: int) -> list[str]:
    return [chr(c) for c in range(first, last + 1)
            if unicodedata.category(chr(c))[0] in "LMNPS"]


def _table_chars(codec: str, first: int, last: int) -> list[str]:
    chars = []
    for lead in range(first, last + 1):
        for trail in range(0xA1, 0xFF):
            try:
                char = bytes([lead, trail]).decode(codec)
            except UnicodeDecodeError:
                continue
            if len(char) == 1:
                chars.append(char)
    return chars


def inventory_lines(per_line: int = 32) -> Iterator[str]:
    """Space-separated characters, ``per_line`` a line, every character once."""
    seen: set[str] = set()
    groups = [_block_chars(a, b) for a, b in BLOCKS]
    groups += [_table_chars(*table) for table in CJK_TABLES]
    for chars in groups:
        fresh = [c for c in chars if c not in seen]
        seen.update(fresh)
        for start in range(0, len(fresh), per_line):
            yield " ".join(fresh[start:start + per_line])
