"""Hand-written per-language lexicons behind ``tools/sample_text.py``.

Split by language group so each file stays small; ``BASE`` maps every language to its clause
lexicon (subjects, verbs, objects, places, times, clause template, extra sentences), the other
names hold the task-specific lexicons. Nothing here is taken from any dataset.
"""

from __future__ import annotations

from . import base_central, base_cyrillic_greek, base_east_asian, base_rtl_indic, base_west
from .ads_qa import QADSM, QAM
from .ctkfacts_cs import BACKGROUND, NUMERIC_FACTS, TOWNS
from .nc_keywords import CATEGORIES, NC
from .pawsx_people import PAWSX
from .wpr_terms import SLOTS, WPR

BASE: dict[str, dict] = {}
for _module in (base_west, base_central, base_cyrillic_greek, base_rtl_indic, base_east_asian):
    BASE.update(_module.LEXICONS)

__all__ = ["BACKGROUND", "BASE", "CATEGORIES", "NC", "NUMERIC_FACTS", "PAWSX", "QADSM", "QAM",
           "SLOTS", "TOWNS", "WPR"]
