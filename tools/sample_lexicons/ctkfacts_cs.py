"""CTKFacts-style Czech fact lexicon (written for this project; the facts are invented).

Claims are either an event clause from the Czech base lexicon (refuted by the same sentence with
the negated ``ne-`` verb) or a numeric fact about a town (refuted by the same sentence with a
different number). Town names come with their locative phrase ("v Kolíně", "ve Zlíně").
"""

TOWNS: list[tuple[str, str]] = [
    ("Kolín", "v Kolíně"), ("Tábor", "v Táboře"), ("Písek", "v Písku"), ("Třebíč", "v Třebíči"),
    ("Jihlava", "v Jihlavě"), ("Zlín", "ve Zlíně"), ("Opava", "v Opavě"), ("Kladno", "v Kladně"),
    ("Cheb", "v Chebu"), ("Příbram", "v Příbrami"), ("Beroun", "v Berouně"),
    ("Kroměříž", "v Kroměříži"), ("Hodonín", "v Hodoníně"), ("Vsetín", "ve Vsetíně"),
]

# (template, low, high): {town} nominative, {loc} "v/ve" + locative, {n} the number.
NUMERIC_FACTS: list[tuple[str, int, int]] = [
    ("Město {town} má {n} obyvatel.", 12000, 98000),
    ("Radnice {loc} byla postavena v roce {n}.", 1450, 1890),
    ("Nemocnice {loc} má {n} lůžek.", 120, 950),
    ("Festival {loc} loni navštívilo {n} lidí.", 2000, 40000),
    ("Knihovna {loc} půjčila v roce 2020 celkem {n} knih.", 5000, 90000),
    ("Most přes řeku {loc} byl otevřen v roce {n}.", 1900, 2015),
]

# Sentences that say nothing about any claim: padding for evidence paragraphs.
BACKGROUND: list[str] = [
    "Okolí města je známé lesy a rybníky.",
    "Historické centrum bylo v posledních letech opraveno.",
    "Místní noviny o tom informovaly na titulní straně.",
    "Na náměstí se každou sobotu konají trhy.",
    "Autobusové spojení s okolními obcemi je časté.",
    "Radní o rozpočtu jednali na zasedání v březnu.",
    "Turisté často navštěvují zdejší zámek.",
    "Škola v centru oslavila sté výročí založení.",
]
