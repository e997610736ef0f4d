"""The synthetic sample text: determinism, schema, scripts, and the labelling rules.

The rules are re-checked by re-implementations written here from the rule statements (token
overlap, keyword counts, first-named actor, one-token edits), not by calling the generator's code.
The data-contract table is restated here so a drift in ``LANGUAGES`` is caught.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools import sample_text as st  # noqa: E402
from tools.sample_lexicons import BASE, NC, PAWSX, QADSM, QAM, SLOTS, WPR  # noqa: E402

XNLI15 = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
# dataset -> (train languages, validation/test languages), from the data contract.
CONTRACT = {
    "xnli": (XNLI15, XNLI15),
    "pawsx": (["en"], ["de", "en", "es", "fr", "ja", "ko", "zh"]),
    "nc": (["en"], ["de", "en", "es", "fr", "ru"]),
    "qadsm": (["en"], ["de", "en", "fr"]),
    "qam": (["en"], ["de", "en", "fr"]),
    "wpr": (["en"], ["de", "en", "es", "fr", "it", "pt", "zh"]),
    "ctkfacts_nli": (["cs"], ["cs"]),
}
MC4 = "ar bg cs de el en es fr hi it ja ko pt ru sw th tr ur vi zh".split()
FIELDS = {
    "xnli": {"premise": str, "hypothesis": str, "label": str},
    "pawsx": {"sentence1": str, "sentence2": str, "label": int},
    "nc": {"news_title": str, "news_body": str, "news_category": str},
    "qadsm": {"query": str, "ad_title": str, "ad_description": str, "relevance_label": str},
    "qam": {"question": str, "answer": str, "label": str},
    "wpr": {"query_id": int, "query": str, "web_page_title": str, "web_page_snippet": str,
            "relavance_label": str},
    "ctkfacts_nli": {"id": int, "claim": str, "evidence": list, "label": str},
}
LABEL_SETS = {
    "xnli": {"entailment", "neutral", "contradiction"},
    "pawsx": {0, 1},
    "nc": {"foodanddrink", "sports", "travel", "finance", "lifestyle", "news", "entertainment",
           "health", "video", "autos"},
    "qadsm": {"Bad", "Good"},
    "qam": {"False", "True"},
    "wpr": {"Bad", "Fair", "Good", "Excellent", "Perfect"},
    "ctkfacts_nli": {"SUPPORTS", "NOT ENOUGH INFO", "REFUTES"},
}
LABEL_FIELD = {"xnli": "label", "pawsx": "label", "nc": "news_category", "qadsm": "relevance_label",
               "qam": "label", "wpr": "relavance_label", "ctkfacts_nli": "label"}
WPR_GRADES = ["Bad", "Fair", "Good", "Excellent", "Perfect"]
NO_SPACE = {"zh", "ja", "th"}


def cases() -> list[tuple[str, str, str]]:
    out = []
    for dataset, (train, evaluation) in CONTRACT.items():
        out += [(dataset, "train", lang) for lang in train]
        out += [(dataset, split, lang) for split in ("validation", "test") for lang in evaluation]
    return out


def words(text: str) -> list[str]:
    """Lower-cased words with surrounding punctuation removed."""
    return [w.strip(".,:;!?«»()|–-\"'¿¡。，、").lower() for w in text.split()]


def contains(text: str, phrase: str, lang: str) -> bool:
    """Whole-word (space languages) or substring (zh/ja/th) occurrence, case-insensitive."""
    if lang in NO_SPACE:
        return phrase in text
    return f" {' '.join(words(phrase))} " in f" {' '.join(words(text))} "


def texts_of(row: dict) -> list[str]:
    """The text fields of a row (label names are English whatever the language)."""
    out = []
    for field, value in row.items():
        if field in LABEL_FIELD.values():
            continue
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(value)
    return out


# ---------------------------------------------------------------------------------------------


def test_languages_table_matches_contract():
    assert set(st.LANGUAGES) == set(CONTRACT)
    for dataset, (train, evaluation) in CONTRACT.items():
        assert sorted(st.LANGUAGES[dataset]["train"]) == sorted(train), dataset
        for split in ("validation", "test"):
            assert sorted(st.LANGUAGES[dataset][split]) == sorted(evaluation), (dataset, split)
    assert sorted(st.MC4_LANGUAGES) == sorted(MC4)


@pytest.mark.parametrize("dataset", list(CONTRACT))
def test_deterministic_and_seed_dependent(dataset):
    lang = CONTRACT[dataset][1][0]
    first = st.records(dataset, lang, "validation", 25, seed=3)
    assert first == st.records(dataset, lang, "validation", 25, seed=3)
    assert first != st.records(dataset, lang, "validation", 25, seed=4)
    assert first != st.records(dataset, lang, "test", 25, seed=3)


def test_mc4_and_corpus_deterministic():
    assert st.mc4_documents("cs", 5, 1) == st.mc4_documents("cs", 5, 1)
    assert st.mc4_documents("cs", 5, 1) != st.mc4_documents("cs", 5, 2)
    head = [line for _, line in zip(range(3000), st.all_text(0), strict=False)]
    assert head == [line for _, line in zip(range(3000), st.all_text(0), strict=False)]


def test_determinism_does_not_depend_on_hash_seed(tmp_path):
    """A fresh interpreter with another PYTHONHASHSEED makes the same rows."""
    import os
    import subprocess

    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tools import sample_text as s; "
            "print(repr(s.records('wpr', 'zh', 'test', 12, 5) + s.records('nc', 'ru', 'test', 12, 5)"
            " + s.mc4_documents('th', 2, 5)))")
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        outs.append(subprocess.run([sys.executable, "-c", code, str(REPO_ROOT)], env=env,
                                   check=True, capture_output=True, text=True).stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 1000


@pytest.mark.parametrize("dataset,split,lang", cases())
def test_fields_types_and_labels(dataset, split, lang):
    rows = st.records(dataset, lang, split, 40, seed=0)
    assert len(rows) == 40
    for row in rows:
        assert set(row) == set(FIELDS[dataset]), row
        for field, kind in FIELDS[dataset].items():
            assert isinstance(row[field], kind) and not isinstance(row[field], bool), (field, row)
            if kind is str:
                assert row[field].strip() == row[field] and row[field], (field, row)
        assert row[LABEL_FIELD[dataset]] in LABEL_SETS[dataset]
    if dataset == "ctkfacts_nli":
        assert all(row["evidence"] and all(isinstance(p, str) and p for p in row["evidence"])
                   for row in rows)
        assert len({row["id"] for row in rows}) == len(rows)


@pytest.mark.parametrize("dataset", list(CONTRACT))
def test_labels_balanced(dataset):
    lang = CONTRACT[dataset][0][0]
    rows = st.records(dataset, lang, "train", 600, seed=0)
    counts = Counter(row[LABEL_FIELD[dataset]] for row in rows)
    assert set(counts) == LABEL_SETS[dataset]
    expected = len(rows) / len(LABEL_SETS[dataset])
    assert all(abs(c - expected) <= 0.25 * expected for c in counts.values()), counts


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="squad"):
        st.records("squad", "en", "train", 3, 0)
    with pytest.raises(ValueError, match="'de'"):
        st.records("qam", "de", "train", 3, 0)  # QAM trains on en only
    with pytest.raises(ValueError, match="dev"):
        st.records("xnli", "en", "dev", 3, 0)
    with pytest.raises(ValueError, match="n must be"):
        st.records("xnli", "en", "train", -1, 0)
    with pytest.raises(ValueError, match="'xx'"):
        st.mc4_documents("xx", 3, 0)


# ---------------------------------------------------------------------------------------------
# Scripts


def _ranges(*pairs: tuple[int, int]) -> list[tuple[int, int]]:
    return list(pairs)


LATIN = _ranges((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF))
SCRIPT = {
    **{lang: LATIN for lang in "cs de en es fr it pt sw tr vi".split()},
    "ru": _ranges((0x400, 0x4FF)), "bg": _ranges((0x400, 0x4FF)),
    "el": _ranges((0x370, 0x3FF), (0x1F00, 0x1FFF)),
    "ar": _ranges((0x600, 0x6FF)), "ur": _ranges((0x600, 0x6FF), (0x750, 0x77F)),
    "hi": _ranges((0x900, 0x97F)), "th": _ranges((0xE00, 0xE7F)),
    "zh": _ranges((0x4E00, 0x9FFF)), "ja": _ranges((0x3040, 0x30FF), (0x4E00, 0x9FFF)),
    "ko": _ranges((0xAC00, 0xD7AF)),
}
# Letters a language's text must show somewhere (its script's distinctive letters).
DISTINCTIVE = {
    "cs": "ěščřžůň", "de": "äöüß", "fr": "éèàçêœ", "es": "ñáéíóú", "it": "àèìòù",
    "pt": "ãõçáêó", "tr": "ığşçöüİ", "vi": "ạảấầậắằặẹếềểệịọỏốồổộớờởợụủứừửựđ",
    "ur": "ےںہٹڈڑکگی", "ja": "はをでまし", "ko": "는을에서", "zh": "的在不那", "ar": "ال",
    "ru": "ыёъ", "bg": "ъ", "el": "άέήίόύώ", "hi": "है", "th": "ที่ไม่", "sw": "wa", "en": "the",
}
ASCII_ONLY = {"en", "sw"}  # no accented letters in these languages' text


def language_text(lang: str) -> list[str]:
    out = st.mc4_documents(lang, 20, seed=11)
    for dataset, by_split in st.LANGUAGES.items():
        if lang in by_split["validation"]:
            for row in st.records(dataset, lang, "validation", 30, seed=11):
                out += texts_of(row)
    return out


@pytest.mark.parametrize("lang", MC4)
def test_text_is_in_the_language_script(lang):
    text = " ".join(language_text(lang))
    for char in set(text):
        if unicodedata.category(char)[0] in "LM":
            code = ord(char)
            assert any(lo <= code <= hi for lo, hi in SCRIPT[lang]), (lang, char, hex(code))
            if lang in ASCII_ONLY:
                assert code < 0x80, (lang, char)
    assert any(ch in text for ch in DISTINCTIVE[lang]) if lang not in ("en", "sw", "hi", "ar") \
        else DISTINCTIVE[lang] in text, lang
    if lang == "ar":  # Arabic, not Urdu: none of the Urdu-only letters
        assert not set("ےںٹڈڑگکی") & set(text)
    if lang == "zh":  # Chinese, not Japanese: no kana
        assert not any(0x3040 <= ord(c) <= 0x30FF for c in text)


@pytest.mark.parametrize("lang", MC4)
def test_mc4_documents_are_paragraphs(lang):
    docs = st.mc4_documents(lang, 30, seed=2)
    assert len(docs) == 30 and len(set(docs)) == 30
    for doc in docs:
        size = len(doc) / (4 if lang == "th" else 2) if lang in NO_SPACE else len(doc.split())
        assert 40 <= size <= 150, (lang, size, doc)
        assert len(re.findall(r"[.。।۔]", doc)) >= 3 or lang == "th", doc


# ---------------------------------------------------------------------------------------------
# Labelling rules, re-implemented

NEGATION = {
    "en": r"\bnot\b", "de": r"\bnicht\b", "fr": r"\bpas\b", "es": r"\bno\b", "ru": r"\bне\b",
    "bg": r"\bне\b", "el": r"\bδεν\b", "ar": r"\bلا\b", "hi": "नहीं", "ur": "نہیں",
    "vi": r"\bkhông\b", "sw": r"\bha\w*i\b", "tr": r"m[ıiuü]yor\b", "th": "ไม่", "zh": "不",
}


@pytest.mark.parametrize("lang", XNLI15)
def test_xnli_rule(lang):
    lex = BASE[lang]
    for row in st.records("xnli", lang, "test", 120, seed=5):
        premise, hyp = row["premise"], row["hypothesis"]
        negated = re.search(NEGATION[lang], hyp) is not None
        assert negated == (row["label"] == "contradiction"), row
        assert re.search(NEGATION[lang], premise) is None, row
        if negated:
            continue
        mentioned = [x for x in lex["objects"] + lex["places"] if contains(hyp, x, lang)]
        assert mentioned, row
        novel = [x for x in mentioned if not contains(premise, x, lang)]
        assert bool(novel) == (row["label"] == "neutral"), (row, novel)
        if row["label"] == "entailment" and lang not in NO_SPACE:
            assert set(words(hyp)) <= set(words(premise)), row


@pytest.mark.parametrize("lang", CONTRACT["pawsx"][1])
def test_pawsx_rule(lang):
    names = PAWSX[lang]["names"]

    def actors(sentence: str) -> list[str]:
        return sorted((n for n in names if n in sentence), key=sentence.index)

    negated = [v for v in PAWSX[lang]["negated"] if v not in PAWSX[lang]["verbs"]]
    negation = PAWSX[lang].get("neg", "").strip()

    def is_negated(sentence: str) -> bool:
        if negation:
            return re.search(rf"\b{negation}\b", sentence) is not None
        return any(v in sentence for v in negated)

    kinds = {"swapped": 0, "replaced": 0, "negated": 0}
    for row in st.records("pawsx", lang, "validation", 120, seed=5):
        a1, a2 = actors(row["sentence1"]), actors(row["sentence2"])
        assert len(a1) == 2 and len(a2) == 2, row
        assert not is_negated(row["sentence1"]), row
        # Same people in the same roles, verb not negated <=> paraphrase; else the roles are
        # swapped, a person is replaced, or the verb is negated (exactly one of them).
        same_people, same_roles = sorted(a1) == sorted(a2), a1[0] == a2[0]
        neg = is_negated(row["sentence2"])
        assert (same_people and same_roles and not neg) == (row["label"] == 1), row
        if row["label"] == 0:
            kind = "negated" if neg else "replaced" if not same_people else "swapped"
            assert sum([neg, not same_people, same_people and not same_roles]) == 1, row
            kinds[kind] += 1
    assert all(kinds.values()), kinds
    assert kinds["negated"] > kinds["swapped"] + kinds["replaced"], kinds  # most are negated


@pytest.mark.parametrize("lang", CONTRACT["nc"][1])
def test_nc_rule(lang):
    keywords = NC[lang]["keywords"]
    for row in st.records("nc", lang, "test", 120, seed=5):
        text = row["news_title"] + " . " + row["news_body"]
        hits = {cat: sum(contains(text, kw, lang) for kw in kws) for cat, kws in keywords.items()}
        best = max(hits.values())
        assert [c for c, h in hits.items() if h == best] == [row["news_category"]], (row, hits)


@pytest.mark.parametrize("lang", CONTRACT["qadsm"][1])
def test_qadsm_rule(lang):
    for row in st.records("qadsm", lang, "test", 120, seed=5):
        overlap = set(words(row["query"])) & set(words(row["ad_title"] + " " + row["ad_description"]))
        assert bool(overlap) == (row["relevance_label"] == "Good"), (row, overlap)
    ads = [r["ad_title"] + " " + r["ad_description"] for r in st.records("qadsm", lang, "test", 120, seed=5)
           if r["relevance_label"] == "Bad"]
    products = QADSM[lang]["products"]
    without = sum(not any(contains(ad, p, lang) for p in products) for ad in ads)
    assert len(ads) / 2 < without < len(ads), "Bad ads: most name no product, some sell another"


@pytest.mark.parametrize("lang", CONTRACT["qam"][1])
def test_qam_rule(lang):
    entities = QAM[lang]["entities"]
    for row in st.records("qam", lang, "test", 120, seed=5):
        asked = max((e for e in entities if contains(row["question"], e, lang)), key=len)
        assert contains(row["answer"], asked, lang) == (row["label"] == "True"), row
    misses = [r["answer"] for r in st.records("qam", lang, "test", 120, seed=5)
              if r["label"] == "False"]
    about_nothing = sum(not any(contains(a, e, lang) for e in entities) for a in misses)
    assert len(misses) / 2 < about_nothing < len(misses), (
        "False passages: most about no entity, some about another")


@pytest.mark.parametrize("lang", CONTRACT["wpr"][1])
def test_wpr_rule_and_grouping(lang):
    rows = st.records("wpr", lang, "test", 150, seed=5)
    for row in rows:
        page = row["web_page_title"] + " . " + row["web_page_snippet"]
        found = sum(contains(page, term, lang) for term in row["query"].split())
        assert WPR_GRADES[found] == row["relavance_label"], (row, found)
    # Queries ask for the first half of each slot's terms; most missing terms are from the
    # second half (never asked), the rest another asked term.
    lex = WPR[lang]
    asked = [t for slot in SLOTS for t in lex[slot][: len(lex[slot]) // 2]]
    unasked = [t for slot in SLOTS for t in lex[slot][len(lex[slot]) // 2:]]
    never, other = 0, 0
    for row in rows:
        query = row["query"].split()
        assert all(any(t.lower() == q.lower() for t in asked) for q in query), row
        page = row["web_page_title"] + " . " + row["web_page_snippet"]
        never += sum(contains(page, t, lang) for t in unasked)
        other += sum(contains(page, t, lang) and t.lower() not in map(str.lower, query)
                     for t in asked)
    assert other > 0 and never > 2 * other, (never, other)
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["query_id"], []).append(row)
    order = [row["query_id"] for row in rows]
    assert order == sorted(order), "pages of one query are contiguous"
    sizes = [len(g) for g in groups.values()]
    assert 4 <= sum(sizes) / len(sizes) <= 6, sizes
    for group in list(groups.values())[:-1]:  # the last query may be cut short by n
        assert len({r["query"] for r in group}) == 1
        assert len({r["relavance_label"] for r in group}) >= 4


def _one_token_edit(claim: str, sentence: str) -> bool:
    """True iff the sentence differs from the claim in one word: negated verb or a number."""
    a, b = claim.rstrip(".").split(), sentence.rstrip(".").split()
    if len(a) != len(b):
        return False
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    if len(diff) != 1:
        return False
    x, y = diff[0]
    return y == "ne" + x or x == "ne" + y or (x.isdigit() and y.isdigit())


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_ctkfacts_rule(split):
    rows = st.records("ctkfacts_nli", "cs", split, 150, seed=5)
    for row in rows:
        sentences = [s for p in row["evidence"] for s in re.split(r"(?<=\.)\s+", p)]
        if row["claim"] in sentences:
            expected = "SUPPORTS"
        elif any(_one_token_edit(row["claim"], s) for s in sentences):
            expected = "REFUTES"
        else:
            expected = "NOT ENOUGH INFO"
        assert row["label"] == expected, row
        assert 2 <= len(sentences) <= 3, row  # short enough for the demos' input lengths
    refuted = [r for r in rows if r["label"] == "REFUTES"]
    by_number = sum(re.search(r"\d", r["claim"]) is not None for r in refuted)
    assert 0 < by_number < len(refuted) / 2, "both refutation kinds occur, mostly by negation"
    unrelated = [r for r in rows if r["label"] == "NOT ENOUGH INFO" and re.search(r"\d", r["claim"])]
    assert any(not re.search(r"\d", " ".join(r["evidence"])) for r in unrelated), (
        "some NOT ENOUGH INFO evidence for a figure names no figure at all")


# ---------------------------------------------------------------------------------------------
# Demo SentencePiece models

ASSETS = REPO_ROOT / "mtl_jax" / "data" / "assets"
T5_MODEL, XLMR_MODEL = ASSETS / "demo_t5_spm.model", ASSETS / "demo_xlmr_spm.model"


def _processor(path: Path):
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(path))


def test_demo_models_have_the_t5_and_xlmr_layouts():
    t5, xlmr = _processor(T5_MODEL), _processor(XLMR_MODEL)
    assert (t5.pad_id(), t5.eos_id(), t5.unk_id(), t5.bos_id()) == (0, 1, 2, -1)
    assert [t5.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert (xlmr.unk_id(), xlmr.bos_id(), xlmr.eos_id(), xlmr.pad_id()) == (0, 1, 2, -1)
    assert [xlmr.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # Same learned pieces in both: only the special-token layout differs.
    assert [t5.id_to_piece(i) for i in range(3, t5.get_piece_size())] == \
        [xlmr.id_to_piece(i) for i in range(3, xlmr.get_piece_size())]
    for path in (T5_MODEL, XLMR_MODEL):
        assert path.stat().st_size < 1_000_000


@pytest.mark.parametrize("lang", MC4)
def test_demo_vocab_covers_generated_text_without_unk(lang):
    sp = _processor(T5_MODEL)
    texts = st.mc4_documents(lang, 20, seed=424242)
    ids = [i for t in texts for i in sp.encode(t)]
    assert ids and sp.unk_id() not in ids, [sp.id_to_piece(i) for i in ids][:50]
    # Lossless up to the model's NFKC normalisation (e.g. the fullwidth comma becomes ",").
    expected = [unicodedata.normalize("NFKC", " ".join(t.split())) for t in texts]
    assert [sp.decode(sp.encode(t)) for t in texts] == expected


@pytest.mark.parametrize("lang", XNLI15)
def test_demo_vocab_unk_rate_on_real_xnli(shared_data, lang):
    """Real sentences (read in place, never stored) hardly ever fall back to unk."""
    sp = _processor(XLMR_MODEL)
    lines = (shared_data / "xnli" / f"dev-{lang}.tsv").read_text("utf-8").splitlines()[:200]
    ids = [i for line in lines for text in line.split("\t")[:2] for i in sp.encode(text)]
    assert sum(i == sp.unk_id() for i in ids) / len(ids) < 0.02


def test_committed_models_equal_a_rebuild():
    """tools/make_vocab.py is deterministic and the committed files are its current output."""
    from tools import make_vocab

    built = make_vocab.build()
    assert built["demo_t5_spm.model"] == T5_MODEL.read_bytes(), "re-run tools/make_vocab.py"
    assert built["demo_xlmr_spm.model"] == XLMR_MODEL.read_bytes(), "re-run tools/make_vocab.py"
