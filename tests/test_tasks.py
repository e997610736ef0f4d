"""The seqio task registry: inventory, examples of every task, text formats, labels, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import seqio

from mtl_jax.data import converters, formats, sources, tasks

# The data table of the spec, written out independently of the code under test.
TABLE = {
    "xnli": ("en", "ar bg de el en es fr hi ru sw th tr ur vi zh"),
    "pawsx": ("en", "de en es fr ja ko zh"),
    "nc": ("en", "de en es fr ru"),
    "qadsm": ("en", "de en fr"),
    "qam": ("en", "de en fr"),
    "wpr": ("en", "de en es fr it pt zh"),
    "ctkfacts_nli": ("cs", "cs"),
    "ctkfacts_xnli": ("cs", "cs"),
}
MC4_LANGS = "ar bg cs de el en es fr hi it ja ko pt ru sw th tr ur vi zh".split()
HEADS = {"ctkfacts_xnli": "xnli", "xnli_mix": "xnli"}
# Field order of the t2t input text, and the cls text / text_pair fields.
T2T_FIELDS = {
    "xnli": ["premise", "hypothesis"],
    "pawsx": ["sentence1", "sentence2"],
    "nc": ["news_title", "news_body"],
    "qadsm": ["query", "ad_title", "ad_description"],
    "qam": ["question", "answer"],
    "wpr": ["query", "web_page_title", "web_page_snippet"],
    "ctkfacts_nli": ["evidence", "claim"],
}
CLS_PAIR = {  # dataset -> (text fields, text_pair fields)
    "xnli": (["premise"], ["hypothesis"]),
    "pawsx": (["sentence1"], ["sentence2"]),
    "nc": (["news_title"], ["news_body"]),
    "qadsm": (["query"], ["ad_title", "ad_description"]),
    "qam": (["question"], ["answer"]),
    "wpr": (["query"], ["web_page_title", "web_page_snippet"]),
    "ctkfacts_nli": (["evidence"], ["claim"]),
}
LABEL_FIELDS = {"nc": "news_category", "qadsm": "relevance_label", "wpr": "relavance_label"}
CTK_TO_XNLI = {"SUPPORTS": "entailment", "NOT ENOUGH INFO": "neutral", "REFUTES": "contradiction"}


def _expected_tasks() -> dict[str, tuple[str, ...]]:
    out = {}
    for dataset, (train_lang, langs) in TABLE.items():
        for lang in langs.split():
            splits = (
                ("train", "validation", "test") if lang == train_lang else ("validation", "test")
            )
            for fmt in ("t2t", "cls"):
                out[f"{dataset}_{fmt}_{lang}"] = splits
    out["xnli_mix_t2t"] = out["xnli_mix_cls"] = ("train",)
    for lang in MC4_LANGS:
        out[f"mc4_t2t_{lang}"] = ("train", "validation")
    return out


EXPECTED = _expected_tasks()


@pytest.fixture(autouse=True)
def _defaults():
    sources.reset_sources()
    tasks.set_vocabulary("t2t", None)
    tasks.set_vocabulary("cls", None)
    yield
    sources.reset_sources()
    tasks.set_vocabulary("t2t", None)
    tasks.set_vocabulary("cls", None)


def _examples(name: str, split: str, n: int | None = None, seq=None, **kw) -> list[dict]:
    ds = seqio.get_mixture_or_task(name).get_dataset(seq, split=split, shuffle=False, **kw)
    if n is not None:
        ds = ds.take(n)
    return list(ds.as_numpy_iterator())


def _dataset_of(name: str) -> str:
    return tasks.task_info(name).dataset


def test_inventory_matches_the_table():
    # GLUE and CS224N are declared like user datasets and have their own tests.
    infos = {i.name: i for i in tasks.all_task_infos()
             if not i.dataset.startswith(("glue_", "cs224n_"))}
    assert {n: i.splits for n, i in infos.items()} == EXPECTED
    registered = set(seqio.TaskRegistry.names())
    assert set(EXPECTED) <= registered
    for name, info in infos.items():
        assert info.head == HEADS.get(info.dataset, info.dataset)
        assert f"_{info.format}" in name and info.language in (name.rsplit("_", 1)[-1], "mix")
    assert infos["ctkfacts_nli_cls_cs"].label_names == ("SUPPORTS", "NOT ENOUGH INFO", "REFUTES")
    assert infos["nc_t2t_de"].label_names[:3] == ("foodanddrink", "sports", "travel")
    assert infos["wpr_cls_zh"].metrics == ("ndcg",)
    assert infos["ctkfacts_xnli_t2t_cs"].metrics == ("macro_f1", "micro_f1", "accuracy")


def test_every_task_source_yields_examples_for_every_split():
    """The data source of every task, every split, on the bundled samples (no TF pipeline)."""
    for name, splits in EXPECTED.items():
        for split in splits:
            examples = tasks.source_examples(name, split)
            assert examples, (name, split)
            info = tasks.task_info(name)
            assert {ex["task"] for ex in examples} == {info.head}


# Every registered task, every split, through seqio on the bundled samples. Building a seqio
# pipeline costs ~1 s on a loaded 2-core machine, so the fast tier runs one task per kind (all
# its splits) and the full sweep over all 106 tasks is marked slow.
SEQ = {"inputs": 96, "targets": 16, "text": 48, "text_pair": 48}
FAST_SWEEP = {
    "xnli_t2t_en",
    "pawsx_cls_en",
    "wpr_t2t_en",
    "ctkfacts_xnli_cls_cs",
    "mc4_t2t_cs",
    "xnli_mix_cls",
}


@pytest.mark.parametrize(
    "name",
    [n if n in FAST_SWEEP else pytest.param(n, marks=pytest.mark.slow) for n in sorted(EXPECTED)],
)
def test_every_task_yields_examples(name: str):
    info = tasks.task_info(name)
    task = seqio.get_mixture_or_task(name)
    for split in info.splits:
        (ex,) = list(task.get_dataset(SEQ, split=split, shuffle=False).take(1).as_numpy_iterator())
        assert ex["task"].decode() == info.head
        if info.format == "t2t":
            assert 0 < len(ex["inputs"]) <= SEQ["inputs"] and ex["inputs"].dtype == np.int32
            assert ex["targets"][-1] == 1 and len(ex["targets"]) <= SEQ["targets"]  # EOS
        else:
            assert 0 < len(ex["text"]) <= SEQ["text"] and len(ex["text_pair"]) <= SEQ["text_pair"]
            assert 0 <= ex["label"] < info.num_classes
        if info.dataset == "wpr":
            assert ex["query_id"].dtype == np.int32


@pytest.mark.parametrize("dataset", sorted(T2T_FIELDS))
def test_t2t_text_format_and_targets(dataset: str):
    lang = TABLE[dataset][0]
    name = f"{dataset}_t2t_{lang}"
    records = sources.load_records(dataset, lang, "validation")[:5]
    vocab = tasks.get_vocabulary("t2t")
    examples = _examples(name, "validation", n=5)
    label_field = LABEL_FIELDS.get(dataset, "label")
    for rec, ex in zip(records, examples, strict=True):
        values = [
            formats.evidence_text(rec[f]) if f == "evidence" else str(rec[f])
            for f in T2T_FIELDS[dataset]
        ]
        text = f"{dataset}: " + " ".join(
            f"{f}: {v}" for f, v in zip(T2T_FIELDS[dataset], values, strict=True)
        )
        assert ex["inputs_pretokenized"].decode() == text
        assert list(ex["inputs"]) == vocab.encode(text) + [vocab.eos_id]
        assert vocab.decode(ex["inputs"].tolist()) == vocab.decode(vocab.encode(text))
        label = rec[label_field]
        label_name = formats.PAWSX_LABELS[label] if dataset == "pawsx" else label
        assert vocab.decode(ex["targets"].tolist()) == label_name
        assert ex["targets_pretokenized"].decode() == label_name


def test_t2t_long_inputs_cut_the_longest_field_not_the_end():
    """A CTKFacts claim comes after its evidence: cut to a short input length, the evidence is
    cut and the whole claim survives (seqio's plain trim would cut the claim away)."""
    vocab = tasks.get_vocabulary("t2t")
    records = sources.load_records("ctkfacts_nli", "cs", "validation")[:8]
    head, mid = vocab.encode("ctkfacts_nli: evidence:"), vocab.encode("claim:")
    claims = [vocab.encode(r["claim"]) for r in records]
    room = 2 * max(len(c) for c in claims) + 2  # the longest claim fits whole next to evidence
    length = room + 1 + len(head) + len(mid)
    examples = _examples("ctkfacts_nli_t2t_cs", "validation", n=8,
                         seq={"inputs": length, "targets": 16})
    cut = 0
    for rec, claim, ex in zip(records, claims, examples, strict=True):
        evidence = vocab.encode(formats.evidence_text(rec["evidence"]))
        kept_evidence, kept_claim = converters.longest_first([len(evidence), len(claim)], room)
        assert kept_claim == len(claim)  # the short field is whole
        assert list(ex["inputs"]) == [*head, *evidence[:kept_evidence], *mid, *claim,
                                      vocab.eos_id]
        if kept_evidence < len(evidence):
            cut += 1
            assert len(ex["inputs"]) == length
    assert cut >= 4, "most samples must need cutting at this length"


@pytest.mark.parametrize("dataset", sorted(CLS_PAIR))
def test_cls_text_pair_and_label_ids(dataset: str):
    lang = TABLE[dataset][0]
    records = sources.load_records(dataset, lang, "test")[:5]
    vocab = tasks.get_vocabulary("cls")
    examples = _examples(f"{dataset}_cls_{lang}", "test", n=5)
    names = tasks.task_info(f"{dataset}_cls_{lang}").label_names
    text_fields, pair_fields = CLS_PAIR[dataset]

    def join(rec, fields):
        return " ".join(
            formats.evidence_text(rec[f]) if f == "evidence" else rec[f] for f in fields
        )

    for rec, ex in zip(records, examples, strict=True):
        assert ex["text_pretokenized"].decode() == join(rec, text_fields)
        assert ex["text_pair_pretokenized"].decode() == join(rec, pair_fields)
        assert list(ex["text"]) == vocab.encode(join(rec, text_fields))  # no <s>/</s> added
        assert list(ex["text_pair"]) == vocab.encode(join(rec, pair_fields))
        label = rec[LABEL_FIELDS.get(dataset, "label")]
        assert ex["label"] == (label if dataset == "pawsx" else names.index(label))


def test_ctkfacts_both_formats_on_the_real_export(shared_data: Path):
    sources.set_source("ctkfacts_nli", str(shared_data / "ctkfacts"))
    records = sources.load_records("ctkfacts_nli", "cs", "validation")
    nli = _examples("ctkfacts_nli_cls_cs", "validation")
    xnli = _examples("ctkfacts_xnli_t2t_cs", "validation", seq={"inputs": 4096, "targets": 8})
    assert len(nli) == len(xnli) == len(records) > 100
    vocab = tasks.get_vocabulary("t2t")
    for rec, a, b in zip(records, nli, xnli, strict=True):
        assert a["task"] == b"ctkfacts_nli" and b["task"] == b"xnli"
        assert formats.CTKFACTS_LABELS[a["label"]] == rec["label"]
        assert vocab.decode(b["targets"].tolist()) == CTK_TO_XNLI[rec["label"]]
        assert formats.XNLI_LABELS[b["label"]] == CTK_TO_XNLI[rec["label"]]
        premise = " ".join(p.strip() for p in rec["evidence"])
        assert (
            b["inputs_pretokenized"].decode()
            == f"xnli: premise: {premise} hypothesis: {rec['claim']}"
        )
        assert (
            a["text_pretokenized"].decode() == premise
            and a["text_pair_pretokenized"].decode() == rec["claim"]
        )


def test_source_setting_is_read_when_the_dataset_is_built(shared_data: Path):
    task = seqio.get_mixture_or_task("xnli_cls_de")  # registered at import, before the setting
    bundled = task.num_input_examples("validation")
    sources.set_source("xnli", str(shared_data / "xnli"))
    assert task.num_input_examples("validation") == 2490
    (ex,) = _examples("xnli_cls_de", "validation", n=1)
    first = (
        (shared_data / "xnli" / "dev-de.tsv").read_text(encoding="utf-8").split("\n")[0].split("\t")
    )
    assert (
        ex["text_pretokenized"].decode() == first[0]
        and formats.XNLI_LABELS[ex["label"]] == first[2]
    )
    sources.reset_sources()
    assert task.num_input_examples("validation") == bundled != 2490


def test_vocabulary_is_resolved_lazily():
    demo = tasks.get_vocabulary("t2t")
    plain = seqio.SentencePieceVocabulary(demo.sentencepiece_model_file, extra_ids=0)
    tasks.set_vocabulary("t2t", plain)
    assert tasks.VOCABULARIES["t2t"].vocab_size == plain.vocab_size == demo.vocab_size - 100
    (ex,) = _examples("qam_t2t_en", "train", n=1)
    assert list(ex["inputs"]) == plain.encode(ex["inputs_pretokenized"].decode()) + [1]
    tasks.set_vocabulary("cls", "/nonexistent/checkpoint")
    with pytest.raises(FileNotFoundError, match="/nonexistent/checkpoint"):
        _examples("qam_cls_en", "train", n=1)


def test_xnli_mix_tasks():
    examples = tasks.source_examples("xnli_mix_cls", "train")
    langs = [ex["language"] for ex in examples]
    counts = {lang: langs.count(lang) for lang in set(langs)}
    assert set(counts) == set(TABLE["xnli"][1].split()) and len(set(counts.values())) == 1
    (ex,) = _examples("xnli_mix_t2t", "train", n=1)
    assert ex["task"] == b"xnli" and ex["inputs_pretokenized"].startswith(b"xnli: premise: ")


def test_mc4_span_corruption_task():
    vocab = tasks.get_vocabulary("t2t")
    examples = _examples("mc4_t2t_cs", "train", n=3, seq={"inputs": 64, "targets": 16})
    for ex in examples:
        assert ex["task"] == b"mc4"
        sentinels = [int(t) for t in ex["inputs"] if t >= vocab.vocab_size - 100]
        assert sentinels and sentinels[0] == vocab.vocab_size - 1
        assert ex["targets"][0] == vocab.vocab_size - 1 and ex["targets"][-1] == 1


def test_sharding_splits_examples_disjointly():
    """Two shards hold every example exactly once between them (an example is identified by its
    title and body: titles alone repeat in this sample)."""
    task = seqio.get_mixture_or_task("nc_cls_de")

    def ids(**kw) -> list[tuple]:
        examples = _examples("nc_cls_de", "validation", **kw)
        return [(tuple(e["text"]), tuple(e["text_pair"])) for e in examples]

    full = ids()
    assert len(set(full)) == len(full) == task.num_input_examples("validation"), "repeated rows"
    parts = [ids(shard_info=seqio.ShardInfo(i, 2)) for i in range(2)]
    for part in parts:
        assert len(set(part)) == len(part) and part, "a shard repeats an example or is empty"
    assert not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) == set(full)
    assert len(parts[0]) + len(parts[1]) == len(full)
