"""The built-in datasets, declared through the same :func:`register_dataset` a user calls.

XGLUE's six classification tasks (XNLI with XNLI_mix, PAWS-X, NC, QADSM, QAM, WPR), CTKFacts NLI
and its XNLI reformulation ``ctkfacts_xnli``, and mC4 span corruption. What is special about each
(its release layouts, hub repository and split names, label order, WPR's query groups) is written
here, in its spec; the readers of the release formats are in :mod:`mtl_jax.data.formats`.
"""

from __future__ import annotations

from pathlib import Path

from mtl_jax.data import formats
from mtl_jax.data.registry import DatasetSpec, HubSource, register_dataset
from mtl_jax.data.sources import (
    MC4_LANGUAGES,
    NC_LANGUAGES,
    PAWSX_LANGUAGES,
    QADSM_LANGUAGES,
    QAM_LANGUAGES,
    WPR_LANGUAGES,
    XNLI_LANGUAGES,
    Candidate,
    _eval_splits,
    _where,
    dirs,
)

# --------------------------------------------------------------------------- release layouts

_FILE_SPLIT = {"train": "train", "validation": "dev", "test": "test"}
_PAWSX_ORIGINAL_FILE = {"train": "train.tsv", "validation": "dev_2k.tsv", "test": "test_2k.tsv"}


def xnli_layout(root: Path, language: str, split: str) -> list[Candidate]:
    """XTREME TSVs, XNLI-MT 1.0 train files, XGLUE's XNLI folder, XNLI 1.0."""
    f = _FILE_SPLIT[split]
    out: list[Candidate] = []
    for d in dirs(root, "xglue_full_dataset/XNLI", "XNLI", "xnli"):
        out.append(
            Candidate((d / f"{f}-{language}.tsv",), "XTREME TSV", formats.read_xnli_pairs_tsv)
        )
        if split == "train":
            for sub in ("", "multinli", "XNLI-MT-1.0/multinli"):
                path = d / sub / f"multinli.train.{language}.tsv"
                out.append(Candidate((path,), "XNLI-MT 1.0", formats.read_xnli_mt_train))
        else:
            out.append(
                Candidate((d / f"{language}.{f}",), "XGLUE XNLI", formats.read_xnli_pairs_tsv)
            )
            for sub in ("", "XNLI-1.0"):

                def read_1_0(path, *, language=language, **kw):
                    return formats.read_xnli_1_0(path, language, **kw)

                out.append(Candidate((d / sub / f"xnli.{f}.tsv",), "XNLI 1.0", read_1_0))
    return out


def pawsx_layout(root: Path, language: str, split: str) -> list[Candidate]:
    """XTREME TSVs and the original PAWS-X ``x-final`` / XGLUE PAWSX tree."""
    out: list[Candidate] = []
    for d in dirs(root, "xglue_full_dataset/PAWSX", "PAWSX", "x-final", "pawsx"):
        path = d / f"{_FILE_SPLIT[split]}-{language}.tsv"
        out.append(Candidate((path,), "XTREME TSV", formats.read_pawsx_xtreme_tsv))
        path = d / language / _PAWSX_ORIGINAL_FILE[split]
        out.append(Candidate((path,), "PAWS-X / XGLUE PAWSX", formats.read_pawsx_original_tsv))
    return out


def xglue_layout(dataset: str):
    """``xglue_full_dataset/<TASK>/xglue.{dataset}.{lang}.{train,dev,test}``."""
    task_dir = dataset.upper()

    def read(path, **kw):
        return formats.read_xglue_tsv(path, dataset, **kw)

    def layout(root: Path, language: str, split: str) -> list[Candidate]:
        name = f"xglue.{dataset}.{language}.{_FILE_SPLIT[split]}"
        return [
            Candidate((d / name,), "XGLUE", read)
            for d in dirs(root, f"xglue_full_dataset/{task_dir}", task_dir)
        ]

    return layout


def ctkfacts_layout(root: Path, language: str, split: str) -> list[Candidate]:
    """CTKFacts NLI ``{split}.jsonl`` (or ``data/``), or one raw CTKFacts export (file or folder)."""

    def read_export(path, **kw):
        return formats.read_ctkfacts_jsonl(path, split=split, **kw)

    if root.is_file():
        return [Candidate((root,), "CTKFacts raw export", read_export)]
    out = [
        Candidate((d / f"{split}.jsonl",), "CTKFacts NLI", formats.read_ctkfacts_jsonl)
        for d in dirs(root, "data")
    ]
    exports = sorted(root.glob("export*.jsonl")) if root.is_dir() else []
    if len(exports) > 1:
        raise FileNotFoundError(
            f"{_where('ctkfacts_nli', language, split)}: {root} holds several raw exports "
            f"{[p.name for p in exports]}; point the source at one file"
        )
    out += [Candidate((p,), "CTKFacts raw export", read_export) for p in exports]
    return out


def mc4_layout(root: Path, language: str, split: str) -> list[Candidate]:
    """allenai/c4 ``multilingual/c4-{lang}[-validation].tfrecord-*-of-*.json.gz`` shards."""
    suffix = "" if split == "train" else "-validation"
    out = []
    for d in dirs(root, "multilingual"):
        shards = tuple(sorted(d.glob(f"c4-{language}{suffix}.tfrecord-*-of-*.json.gz")))
        out.append(Candidate(shards, "allenai/c4 multilingual", formats.read_mc4_json_gz,
                             multi_file=True))
    return out


# --------------------------------------------------------------------------- hub rows


def _as_is(record: dict) -> dict:
    return record


def _ctkfacts_hub_record(record: dict) -> dict:
    record["evidence"] = formats.flatten_evidence(record["evidence"])
    return record


# --------------------------------------------------------------------------- the specs

# microsoft/xglue on the hub is a loading script whose data URL is gone; this parquet copy keeps
# its configs and split names (train, validation.<lang>, test.<lang>).
_XGLUE_HUB = "hgissbkh/xglue"
_XGLUE_SPLITS = {"validation": "validation.{language}", "test": "test.{language}"}
_CTK_METRICS = ("macro_f1", "micro_f1", "accuracy")


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, n) for n in names)


def _xglue(dataset: str, languages, text, pair, label_field, labels, **kw) -> DatasetSpec:
    return DatasetSpec(
        name=dataset, splits=_eval_splits(["en"], languages),
        fields=_same(*formats.XGLUE_COLUMNS[dataset][:-1]), text_fields=text, pair_fields=pair,
        label_field=label_field, label_names=labels, metrics=kw.pop("metrics", ("accuracy",)),
        layout=xglue_layout(dataset), bundled="xglue_full_dataset",
        hub=HubSource(_XGLUE_HUB, config=dataset, splits=_XGLUE_SPLITS, convert=_as_is), **kw,
    )  # fmt: skip


BUILTIN_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        name="xnli", splits=_eval_splits(["en"], XNLI_LANGUAGES),
        fields=_same("premise", "hypothesis"), text_fields=("premise",),
        pair_fields=("hypothesis",), label_names=formats.XNLI_LABELS, metrics=("accuracy",),
        mix_task="xnli_mix", mix_languages=XNLI_LANGUAGES, layout=xnli_layout, bundled="xnli",
        hub=HubSource("facebook/xnli", config="{language}", convert=_as_is),
    ),
    DatasetSpec(
        name="pawsx", splits=_eval_splits(["en"], PAWSX_LANGUAGES),
        fields=_same("sentence1", "sentence2"), text_fields=("sentence1",),
        pair_fields=("sentence2",), label_names=formats.PAWSX_LABELS, metrics=("accuracy",),
        layout=pawsx_layout, bundled="pawsx",
        # The hub's PAWS-X ClassLabel is named "0"/"1"; the id is what carries meaning.
        hub=HubSource("google-research-datasets/paws-x", config="{language}", label_ids=True,
                      convert=_as_is),
    ),
    _xglue("nc", NC_LANGUAGES, ("news_title",), ("news_body",), "news_category",
           formats.NC_LABELS),
    _xglue("qadsm", QADSM_LANGUAGES, ("query",), ("ad_title", "ad_description"),
           "relevance_label", formats.QADSM_LABELS),
    _xglue("qam", QAM_LANGUAGES, ("question",), ("answer",), "label", formats.QAM_LABELS),
    # WPR ranks the pages of one query: rows sharing the query text form a group.
    _xglue("wpr", WPR_LANGUAGES, ("query",), ("web_page_title", "web_page_snippet"),
           "relavance_label", formats.WPR_LABELS, metrics=("ndcg",), group_field="query_id",
           group_from="query"),
    DatasetSpec(
        name="ctkfacts_nli", splits=_eval_splits(["cs"], ["cs"]),
        fields=_same("evidence", "claim"), text_fields=("evidence",), pair_fields=("claim",),
        label_names=formats.CTKFACTS_LABELS, metrics=_CTK_METRICS, layout=ctkfacts_layout,
        bundled="ctkfacts",
        hub=HubSource("ctu-aic/ctkfacts_nli", columns={"id": "id"}, convert=_ctkfacts_hub_record),
    ),
    # The XNLI reformulation: evidence -> premise, claim -> hypothesis, XNLI head and prefix.
    DatasetSpec(
        name="ctkfacts_xnli", splits=_eval_splits(["cs"], ["cs"]), read_from="ctkfacts_nli",
        fields=(("premise", "evidence"), ("hypothesis", "claim")), text_fields=("premise",),
        pair_fields=("hypothesis",), label_names=formats.XNLI_LABELS, metrics=_CTK_METRICS,
        head="xnli", prefix="xnli",
        label_map={"SUPPORTS": "entailment", "NOT ENOUGH INFO": "neutral",
                   "REFUTES": "contradiction"},
    ),
    DatasetSpec(
        name="mc4", kind="span_corruption",
        splits={"train": MC4_LANGUAGES, "validation": MC4_LANGUAGES},
        fields=_same("text"), formats=("t2t",), layout=mc4_layout, bundled="mc4",
        hub=HubSource("allenai/c4", config="{language}", streaming=True,
                      convert=lambda r: {"text": r["text"]}),
    ),
)  # fmt: skip

for _spec in BUILTIN_SPECS:
    register_dataset(_spec)

# GLUE and the CS224N sets: plain declared files (no release-specific reader needed).
from mtl_jax.data import glue_datasets  # noqa: E402, F401
