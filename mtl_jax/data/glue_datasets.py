"""GLUE and the CS224N multitask sets, declared through the registry like any user dataset.

GLUE (``glue_*``): from the release layout that ``download_glue_data.py`` leaves (one folder per
task with ``train.tsv`` / ``dev.tsv``, tab-separated, never quoted; CoLA without a header) or from
the hub (``nyu-mll/glue``, whose ClassLabel names are the label names below). MNLI's
mismatched dev set is its own dataset ``glue_mnli_mm`` sharing MNLI's head, so both dev sets are
rows of the results table. Test files carry no labels and are not declared.

CS224N (``cs224n_*``): the course project's ``ids-sst-*.csv``, ``quora-*.csv``, ``sts-*.csv``:
tab-separated despite the name, CSV quoting on, a leading unnamed index column; SST-5 sentiment,
Quora paraphrase, SemEval STS similarity (0-5, regression).

The bundled samples (``assets/samples/glue``, ``assets/samples/cs224n``) are the defaults;
``TrainConfig.sources = {'glue_cola': '/data/glue_data', ...}`` points a dataset at a real copy.
"""

from __future__ import annotations

from mtl_jax.data.registry import DatasetSpec, FileSource, HubSource, register_dataset

GLUE_HUB = "nyu-mll/glue"
EN = ("en",)
TRAIN_DEV = {"train": EN, "validation": EN}


def _glue(name: str, folder: str, hub_config: str, fields: dict[str, str], label: str,
          label_names: tuple[str, ...], metrics: tuple[str, ...], *, hub_fields: dict[str, str],
          label_map: dict[str, str] | None = None, regression: bool = False,
          header: bool = True, dev: str = "dev.tsv", hub_validation: str = "validation",
          splits=TRAIN_DEV, **kw) -> DatasetSpec:
    """A GLUE task: ``fields`` maps our field names to the TSV's columns (in input order; the
    first is the classification ``text``, the rest ``text_pair``)."""
    names = tuple(fields)
    files = {"train": f"{folder}/train.tsv", "validation": f"{folder}/{dev}"}
    return DatasetSpec(
        name=name, splits=splits, kind="regression" if regression else "classification",
        fields=tuple((n, n) for n in names), text_fields=names[:1], pair_fields=names[1:],
        label_field="label", label_names=label_names, label_map=label_map, metrics=metrics,
        files=FileSource("tsv", {s: files[s] for s in splits},
                         columns={**fields, "label": label}, header=header),
        hub=HubSource(GLUE_HUB, config=hub_config, splits={"validation": hub_validation},
                      columns={**hub_fields, "label": "label"}),
        bundled="glue", **kw,
    )  # fmt: skip


def _ids(*names: str) -> dict[str, str]:
    """``{"0": names[0], "1": names[1], ...}``: labels released as ClassLabel ids."""
    return {str(i): n for i, n in enumerate(names)}


_ENTAIL2 = ("entailment", "not_entailment")
_NLI3 = ("entailment", "neutral", "contradiction")

GLUE_SPECS: tuple[DatasetSpec, ...] = (
    _glue("glue_cola", "CoLA", "cola", {"sentence": 3}, 1, ("unacceptable", "acceptable"),
          ("mcc", "accuracy"), hub_fields={"sentence": "sentence"}, header=False,
          label_map=_ids("unacceptable", "acceptable")),
    _glue("glue_sst2", "SST-2", "sst2", {"sentence": "sentence"}, "label",
          ("negative", "positive"), ("accuracy",), hub_fields={"sentence": "sentence"},
          label_map=_ids("negative", "positive")),
    _glue("glue_mrpc", "MRPC", "mrpc", {"sentence1": "#1 String", "sentence2": "#2 String"},
          "Quality", ("not_equivalent", "equivalent"), ("f1", "accuracy"),
          hub_fields={"sentence1": "sentence1", "sentence2": "sentence2"},
          label_map=_ids("not_equivalent", "equivalent")),
    _glue("glue_qqp", "QQP", "qqp", {"question1": "question1", "question2": "question2"},
          "is_duplicate", ("not_duplicate", "duplicate"), ("f1", "accuracy"),
          hub_fields={"question1": "question1", "question2": "question2"},
          label_map=_ids("not_duplicate", "duplicate")),
    _glue("glue_stsb", "STS-B", "stsb", {"sentence1": "sentence1", "sentence2": "sentence2"},
          "score", (), ("pearson", "spearman"), regression=True,
          hub_fields={"sentence1": "sentence1", "sentence2": "sentence2"}),
    _glue("glue_mnli", "MNLI", "mnli", {"premise": "sentence1", "hypothesis": "sentence2"},
          "gold_label", _NLI3, ("accuracy",), dev="dev_matched.tsv",
          hub_validation="validation_matched",
          hub_fields={"premise": "premise", "hypothesis": "hypothesis"}),
    _glue("glue_mnli_mm", "MNLI", "mnli", {"premise": "sentence1", "hypothesis": "sentence2"},
          "gold_label", _NLI3, ("accuracy",), dev="dev_mismatched.tsv",
          hub_validation="validation_mismatched", splits={"validation": EN},
          hub_fields={"premise": "premise", "hypothesis": "hypothesis"},
          head="glue_mnli", prefix="glue_mnli"),
    _glue("glue_qnli", "QNLI", "qnli", {"question": "question", "sentence": "sentence"},
          "label", _ENTAIL2, ("accuracy",),
          hub_fields={"question": "question", "sentence": "sentence"}),
    _glue("glue_rte", "RTE", "rte", {"sentence1": "sentence1", "sentence2": "sentence2"},
          "label", _ENTAIL2, ("accuracy",),
          hub_fields={"sentence1": "sentence1", "sentence2": "sentence2"}),
    _glue("glue_wnli", "WNLI", "wnli", {"sentence1": "sentence1", "sentence2": "sentence2"},
          "label", ("not_entailment", "entailment"), ("accuracy",),
          hub_fields={"sentence1": "sentence1", "sentence2": "sentence2"},
          label_map=_ids("not_entailment", "entailment")),
)  # fmt: skip
"""GLUE's nine tasks (+ MNLI mismatched) with GLUE's metrics: MCC for CoLA, F1 + accuracy for
MRPC and QQP, Pearson + Spearman for STS-B, accuracy for the rest."""


def _cs224n(name: str, stem: str, fields: tuple[str, ...], label: str, **kw) -> DatasetSpec:
    files = {"train": f"{stem}-train.csv", "validation": f"{stem}-dev.csv"}
    return DatasetSpec(
        name=name, splits=TRAIN_DEV, fields=tuple((f, f) for f in fields),
        text_fields=fields[:1], pair_fields=fields[1:], label_field=label,
        files=FileSource("csv", files, delimiter="\t"), bundled="cs224n", **kw,
    )  # fmt: skip


SST5_LABELS = ("very negative", "negative", "neutral", "positive", "very positive")

CS224N_SPECS: tuple[DatasetSpec, ...] = (
    _cs224n("cs224n_sst", "ids-sst", ("sentence",), "sentiment", label_names=SST5_LABELS,
            label_map=_ids(*SST5_LABELS), metrics=("accuracy",)),
    _cs224n("cs224n_quora", "quora", ("sentence1", "sentence2"), "is_duplicate",
            label_names=("not_duplicate", "duplicate"),
            label_map={**_ids("not_duplicate", "duplicate"), "0.0": "not_duplicate",
                       "1.0": "duplicate"}, metrics=("accuracy", "f1")),
    _cs224n("cs224n_sts", "sts", ("sentence1", "sentence2"), "similarity", kind="regression",
            metrics=("pearson", "spearman")),
)  # fmt: skip
"""SST-5 (accuracy), Quora (accuracy, F1), SemEval STS (Pearson, Spearman), as the project
scores them on its dev sets."""

for _spec in (*GLUE_SPECS, *CS224N_SPECS):
    register_dataset(_spec)
