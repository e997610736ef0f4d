"""English lexicons for the GLUE and CS224N samples (written for this project, not taken from any
dataset).

``VERB_BASE`` lines up with ``BASE["en"]["verbs"]`` (the clause lexicon of ``base_west``): the
base form each affirmative verb takes after "does"/"to"/"I", used for questions and for CoLA's
agreement errors. ``SENTIMENT`` holds review adjectives graded 0 (very negative) .. 4 (very
positive), the SST-5 scale; SST-2 uses the outer grades only.
"""

from __future__ import annotations

VERB_BASE: tuple[str, ...] = ("buy", "sell", "see", "find", "carry", "bring", "choose", "clean",
                              "look for", "photograph")

# Review vocabulary: every adjective is a single word so that a grade is never a substring of
# another (a test re-derives grades by token lookup).
SENTIMENT: dict[int, tuple[str, ...]] = {
    0: ("unbearable", "awful", "painful", "dreadful", "unwatchable", "miserable"),
    1: ("dull", "clumsy", "tedious", "flat", "forgettable", "messy"),
    2: ("ordinary", "familiar", "modest", "uneven", "predictable", "plain"),
    3: ("charming", "enjoyable", "solid", "likeable", "warm", "pleasant"),
    4: ("brilliant", "wonderful", "superb", "dazzling", "remarkable", "magnificent"),
}
REVIEW_NOUNS: tuple[str, ...] = ("film", "movie", "script", "story", "cast", "ending",
                                 "direction", "dialogue", "soundtrack", "comedy", "drama",
                                 "performance")
# Sentence frames for reviews; {n1}/{n2} are nouns, {a1}/{a2} adjectives of the row's grade.
REVIEW_FRAMES: tuple[str, ...] = (
    "the {n1} is {a1} and the {n2} is {a2} .",
    "a {a1} {n1} with a {a2} {n2} .",
    "{a1} , {a2} and never quite what the {n1} promises .",
    "what a {a1} {n1} : the {n2} feels {a2} from start to finish .",
    "the {n1} turns out {a1} , and so does the {n2} .",
    "it 's a {a1} {n1} , with a {a2} {n2} to match .",
)

# Question frames over (verb base form {v} or {V} capitalised, object {o}); the frames of one
# tuple ask the same thing, the two tuples different things about the same words. Some frames
# quote, one starts with a double quote (a CSV-quoting pitfall real Quora questions have too).
QUESTION_FRAMES: tuple[str, ...] = (
    "How do I {v} {o}?",
    "What is the best way to {v} {o}?",
    "How can I {v} {o} quickly?",
    "What should I know before I {v} {o}?",
    "Is it hard to {v} {o}?",
)
MEANING_FRAMES: tuple[str, ...] = (
    'What does "{v} {o}" mean?',
    'What is meant by "{v} {o}"?',
    '"{V} {o}": what does it mean?',
)

# Winograd-style pairs: (sentence with {a} {b}, the clause after the pronoun, referent "a"/"b").
# Each first part appears twice with clauses that flip the referent, as in the WSC.
WINOGRAD: tuple[tuple[str, str, str], ...] = (
    ("{a} could not lift {b} because", "was too weak.", "a"),
    ("{a} could not lift {b} because", "was too heavy.", "b"),
    ("{a} thanked {b} because", "had been helped.", "a"),
    ("{a} thanked {b} because", "had helped so much.", "b"),
    ("{a} beat {b} at chess because", "played better.", "a"),
    ("{a} beat {b} at chess because", "played badly.", "b"),
    ("{a} called {b} but", "got no answer.", "a"),
    ("{a} called {b} but", "did not answer.", "b"),
    ("{a} waited for {b} because", "was early.", "a"),
    ("{a} waited for {b} because", "was late.", "b"),
    ("{a} lent {b} money because", "was rich.", "a"),
    ("{a} lent {b} money because", "was poor.", "b"),
)
WINOGRAD_NAMES: tuple[str, ...] = ("Tom", "Sam", "Peter", "John", "David", "Paul", "Mark",
                                   "James", "Frank", "George")

# MultiNLI genres: matched (train and matched dev/test) and mismatched (only in mismatched files).
MNLI_MATCHED_GENRES: tuple[str, ...] = ("fiction", "government", "slate", "telephone", "travel")
MNLI_MISMATCHED_GENRES: tuple[str, ...] = ("facetoface", "letters", "nineeleven", "oup",
                                           "verbatim")

# STS-B provenance columns: (genre, filename, year) as the benchmark's files name them.
STSB_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("main-captions", "MSRvid", "2012test"),
    ("main-captions", "images", "2014"),
    ("main-news", "headlines", "2015"),
    ("main-forums", "deft-forum", "2014"),
)

# CoLA source codes (made up; the corpus uses one code per book or article).
COLA_SOURCES: tuple[str, ...] = ("sx01", "sx02", "sx03", "sx04", "sx05", "sx06")

# Coarse part-of-speech tags for the synthetic MNLI parse columns.
POS: dict[str, str] = {
    "the": "DT", "The": "DT", "My": "PRP$", "Our": "PRP$", "my": "PRP$", "our": "PRP$",
    "at": "IN", "in": "IN", "on": "IN", "for": "IN", "does": "VBZ", "not": "RB", "is": "VBZ",
    "every": "DT", "Every": "DT", "today": "NN", "right": "RB", "now": "RB", "old": "JJ",
    "young": "JJ", "new": "JJ", ".": ".", ",": ",", '"': "``", "said": "VBD", "she": "PRP",
    "looking": "VBG",
}
POS.update({verb: "VBZ" for verb in ("buys", "sells", "sees", "finds", "carries", "brings",
                                     "chooses", "cleans", "photographs")})
POS.update({verb: "VB" for verb in VERB_BASE if " " not in verb})
