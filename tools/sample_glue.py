"""Deterministic synthetic English rows for the GLUE tasks and the CS224N multitask sets.

Like ``tools/sample_text.py`` (whose English clause lexicon and XNLI rule this reuses), every
row comes from hand-written lexicons (``tools/sample_lexicons/glue_en.py``) and a simple rule a
small model can learn; nothing is taken from any dataset:

- cola: 1 = a well-formed clause; 0 = the same clause broken (verb agreement, verb after the
  object, doubled article, or missing object).
- sst2 / cs224n_sst: the grade of the review adjectives (SST-5: 0 very negative .. 4 very
  positive; SST-2: 0 = grades 0-1, 1 = grades 3-4).
- mrpc: 1 = sentence2 is sentence1 with its time phrase moved; 0 = it also changes the object or
  the place, or negates the verb.
- qqp / cs224n_quora: duplicate = both questions ask the same (verb, object) in other words;
  not = another object or another verb, in the same or another frame.
- stsb / cs224n_sts: sentence2 keeps k of sentence1's four parts (subject, verb, object, place);
  score = 1.25 k plus a small jitter, within 0..5.
- mnli / rte: the XNLI rule of sample_text (RTE folds neutral and contradiction into
  not_entailment).
- qnli: entailment iff the sentence states who does the asked thing (same verb, object, place).
- wnli: Winograd pairs; 1 iff sentence2 names the referent the clause implies.

Same seed -> identical output (``sample_text._rng``: SHA-256 of the arguments).
"""

from __future__ import annotations

import random
import re

if __package__:
    from . import sample_text as st
    from .sample_lexicons import BASE
    from .sample_lexicons import glue_en as lex
else:  # imported with tools/ on sys.path (python tools/make_samples.py)
    import sample_text as st
    from sample_lexicons import BASE
    from sample_lexicons import glue_en as lex

EN = BASE["en"]

GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
CS224N_TASKS = ("cs224n_sst", "cs224n_quora", "cs224n_sts")
TASKS = GLUE_TASKS + CS224N_TASKS

LABELS: dict[str, tuple] = {
    "cola": (0, 1),
    "sst2": (0, 1),
    "mrpc": (0, 1),
    "qqp": (0, 1),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": (0, 1),
    "cs224n_sst": (0, 1, 2, 3, 4),
    "cs224n_quora": (0, 1),
}
"""Label sets of the classification tasks; stsb and cs224n_sts are regression (0.0 .. 5.0)."""


def _clause(rng: random.Random, **avoid: tuple[str, ...]) -> dict:
    return st._pick_clause("en", rng, avoid_objects=avoid.get("objects", ()),
                           avoid_subjects=avoid.get("subjects", ()))


def _render(parts: dict, negated: bool = False) -> str:
    return st.render_clause("en", parts, negated=negated)


def _other(rng: random.Random, options: list[str], not_this: str) -> str:
    return rng.choice([o for o in options if o != not_this])


# ---------------------------------------------------------------------------------------------
# CoLA


def _cola_broken(parts: dict, rng: random.Random) -> str:
    """The clause with one grammatical error (a whole-clause template edit, never a typo)."""
    verb = EN["verbs"][parts["verb"]][0]
    text = _render(parts)
    kind = rng.choice(("agreement", "order", "article", "object"))
    if kind == "agreement":
        broken = text.replace(f" {verb} ", f" {lex.VERB_BASE[parts['verb']]} ", 1)
        if verb.startswith("is "):  # "is looking for" -> "are looking for" after a singular
            broken = text.replace(f" {verb} ", f" are {verb[3:]} ", 1)
        return broken
    if kind == "order":  # the verb after its object
        return text.replace(f"{verb} {parts['obj']}", f"{parts['obj']} {verb}", 1)
    if kind == "article":
        return text.replace(parts["obj"], "the " + parts["obj"], 1)
    return text.replace(f" {parts['obj']} ", " ", 1)  # a transitive verb without its object


def _cola(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for label in st._balanced(LABELS["cola"], n, rng):
        parts = _clause(rng)
        sentence = _render(parts) if label == 1 else _cola_broken(parts, rng)
        rows.append({"sentence": sentence, "label": label,
                     "source": rng.choice(lex.COLA_SOURCES)})
    return rows


# ---------------------------------------------------------------------------------------------
# SST (2 and 5 classes)


def _review(grade: int, rng: random.Random) -> str:
    a1, a2 = rng.sample(lex.SENTIMENT[grade], 2)
    n1, n2 = rng.sample(lex.REVIEW_NOUNS, 2)
    text = rng.choice(lex.REVIEW_FRAMES).format(a1=a1, a2=a2, n1=n1, n2=n2)
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)  # "a ordinary" -> "an ordinary"


def _sst2(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for label in st._balanced(LABELS["sst2"], n, rng):
        grade = rng.choice((3, 4) if label == 1 else (0, 1))
        # GLUE's SST-2: lower-cased, tokenized, each sentence ending in a space.
        rows.append({"sentence": _review(grade, rng) + " ", "label": label})
    return rows


def _cs224n_sst(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for grade in st._balanced(LABELS["cs224n_sst"], n, rng):
        # The CS224N files keep SST's case and PTB tokens and start with a space.
        rows.append({"sentence": " " + st._cap(_review(grade, rng)), "sentiment": grade})
    return rows


# ---------------------------------------------------------------------------------------------
# MRPC


def _moved_time(parts: dict, negated: bool = False) -> str:
    """The clause with its time phrase in front ("Every morning, the teacher ...")."""
    rest = _render(dict(parts, time=""), negated=negated)
    return f"{st._cap(parts['time'])}, {rest[:1].lower()}{rest[1:]}"


def _mrpc(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for label in st._balanced(LABELS["mrpc"], n, rng):
        parts = _clause(rng)
        parts["time"] = rng.choice(EN["times"])
        other = dict(parts)
        negated = False
        if label == 0:
            kind = rng.choice(("object", "place", "negate"))
            if kind == "object":
                other["obj"] = _other(rng, EN["objects"], parts["obj"])
            elif kind == "place":
                other["place"] = _other(rng, EN["places"], parts["place"])
            else:
                negated = True
        s2 = _moved_time(other, negated=negated)
        rows.append({"sentence1": _render(parts), "sentence2": s2, "label": label})
    return rows


# ---------------------------------------------------------------------------------------------
# QQP / Quora


def _question(frame: str, verb: int, obj: str) -> str:
    base = lex.VERB_BASE[verb]
    return frame.format(v=base, V=st._cap(base), o=obj)


def _question_pairs(n: int, rng: random.Random) -> list[tuple[str, str, int]]:
    rows = []
    for label in st._balanced((0, 1), n, rng):
        verb, obj = rng.randrange(len(lex.VERB_BASE)), rng.choice(EN["objects"])
        group = lex.QUESTION_FRAMES if rng.random() < 0.75 else lex.MEANING_FRAMES
        f1, f2 = rng.sample(group, 2)
        kind = "same" if label == 1 else rng.choice(("object", "verb", "intent"))
        if kind == "same":
            q2 = _question(f2, verb, obj)
        elif kind == "object":  # the same or another frame about another object
            q2 = _question(rng.choice((f1, f2)), verb, _other(rng, EN["objects"], obj))
        elif kind == "verb":
            other_verb = rng.choice([v for v in range(len(lex.VERB_BASE)) if v != verb])
            q2 = _question(f2, other_verb, obj)
        else:  # the same words asked for another reason (how-to vs. meaning)
            other_group = lex.MEANING_FRAMES if group is lex.QUESTION_FRAMES else \
                lex.QUESTION_FRAMES
            q2 = _question(rng.choice(other_group), verb, obj)
        rows.append((_question(f1, verb, obj), q2, label))
    return rows


def _qqp(n: int, rng: random.Random) -> list[dict]:
    return [{"question1": q1, "question2": q2, "label": y}
            for q1, q2, y in _question_pairs(n, rng)]


def _cs224n_quora(n: int, rng: random.Random) -> list[dict]:
    return [{"sentence1": q1, "sentence2": q2, "is_duplicate": y}
            for q1, q2, y in _question_pairs(n, rng)]


# ---------------------------------------------------------------------------------------------
# STS-B / SemEval STS


_STS_PARTS = ("subj", "verb", "obj", "place")


def _sts_pairs(n: int, rng: random.Random) -> list[tuple[str, str, float]]:
    rows = []
    # Every k (kept parts) about equally often, so scores span 0 .. 5.
    for kept in st._balanced(tuple(range(len(_STS_PARTS) + 1)), n, rng):
        parts = _clause(rng)
        other = dict(parts, time=parts["time"] if rng.random() < 0.5 else "")
        for slot in rng.sample(_STS_PARTS, len(_STS_PARTS) - kept):
            if slot == "verb":
                other["verb"] = rng.choice([v for v in range(len(EN["verbs"]))
                                            if v != parts["verb"]])
            else:
                pool = {"subj": EN["subjects"], "obj": EN["objects"], "place": EN["places"]}[slot]
                other[slot] = _other(rng, pool, parts[slot])
        jitter = rng.choice((-0.25, -0.2, 0.0, 0.0, 0.0, 0.2, 0.25))
        score = round(min(5.0, max(0.0, 1.25 * kept + jitter)), 2)
        rows.append((_render(parts), _render(other), score))
    return rows


def _stsb(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for s1, s2, score in _sts_pairs(n, rng):
        genre, filename, year = rng.choice(lex.STSB_SOURCES)
        rows.append({"sentence1": s1, "sentence2": s2, "score": score, "genre": genre,
                     "filename": filename, "year": year})
    return rows


def _cs224n_sts(n: int, rng: random.Random) -> list[dict]:
    return [{"sentence1": s1, "sentence2": s2, "similarity": score}
            for s1, s2, score in _sts_pairs(n, rng)]


# ---------------------------------------------------------------------------------------------
# MNLI, RTE, QNLI, WNLI


def _nli_pair(label: str, rng: random.Random) -> tuple[str, str]:
    row = st._xnli_row("en", label, rng)
    return row["premise"], row["hypothesis"]


def _mnli(n: int, rng: random.Random, genres: tuple[str, ...]) -> list[dict]:
    rows = []
    for label in st._balanced(LABELS["mnli"], n, rng):
        premise, hypothesis = _nli_pair(label, rng)
        genre = rng.choice(genres)
        if genre in ("fiction", "facetoface") and rng.random() < 0.4:
            # Quoted speech: a field that starts with a double quote (GLUE files are read
            # with quoting off; a CSV-quoting reader would swallow the following tabs).
            premise = f'"{premise[:-1]}," she said.'
        rows.append({"premise": premise, "hypothesis": hypothesis, "label": label,
                     "genre": genre})
    return rows


def _rte(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for label in st._balanced(LABELS["rte"], n, rng):
        nli_label = label if label == "entailment" else rng.choice(("neutral", "contradiction"))
        s1, s2 = _nli_pair(nli_label, rng)
        rows.append({"sentence1": s1, "sentence2": s2, "label": label})
    return rows


def _qnli(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for label in st._balanced(LABELS["qnli"], n, rng):
        parts = _clause(rng)
        verb = EN["verbs"][parts["verb"]][0]
        question = f"Who {verb} {parts['obj']} {parts['place']}?"
        answer = dict(parts)
        if label == "not_entailment":  # the same person doing something else, or elsewhere
            kind = rng.choice(("obj", "verb", "place"))
            if kind == "obj":
                answer["obj"] = _other(rng, EN["objects"], parts["obj"])
            elif kind == "place":
                answer["place"] = _other(rng, EN["places"], parts["place"])
            else:
                answer["verb"] = rng.choice([v for v in range(len(EN["verbs"]))
                                             if v != parts["verb"]])
        sentences = [_render(answer)]
        if rng.random() < 0.5:  # context around the candidate sentence
            sentences.insert(rng.randrange(2), rng.choice(EN["extras"]))
        rows.append({"question": question, "sentence": " ".join(sentences), "label": label})
    return rows


def _wnli(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for label in st._balanced(LABELS["wnli"], n, rng):
        first, clause, referent = rng.choice(lex.WINOGRAD)
        a, b = rng.sample(lex.WINOGRAD_NAMES, 2)
        names = {"a": a, "b": b}
        right = names[referent]
        wrong = names["b" if referent == "a" else "a"]
        named = right if label == 1 else wrong
        rows.append({"sentence1": f"{first.format(a=a, b=b)} he {clause}",
                     "sentence2": f"{named} {clause}", "label": label})
    return rows


# ---------------------------------------------------------------------------------------------
# Public API


def records(task: str, split: str, n: int, seed: int, *, matched: bool = True) -> list[dict]:
    """``n`` rows of ``task`` for ``split`` (a name only seeds the generator) with the fields
    above; ``matched`` picks MNLI's genres (the five training genres, or the five others).
    """
    if task not in TASKS:
        raise ValueError(f"records: unknown task {task!r}; known: {', '.join(TASKS)}")
    st._check_n(f"records({task!r}, {split!r})", n)
    rng = st._rng("glue", task, split, matched, seed)
    if task == "mnli":
        genres = lex.MNLI_MATCHED_GENRES if matched else lex.MNLI_MISMATCHED_GENRES
        return _mnli(n, rng, genres)
    return {
        "cola": _cola, "sst2": _sst2, "mrpc": _mrpc, "qqp": _qqp, "stsb": _stsb,
        "qnli": _qnli, "rte": _rte, "wnli": _wnli, "cs224n_sst": _cs224n_sst,
        "cs224n_quora": _cs224n_quora, "cs224n_sts": _cs224n_sts,
    }[task](n, rng)
