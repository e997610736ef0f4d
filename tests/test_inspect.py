"""The inspection CLI: the listing covers the data table, reports agree with independent counts."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtl_jax import inspect as cli

REPO = Path(__file__).resolve().parents[1]

# The data contract's table, written out here independently of mtl_jax.data.sources.
XNLI_LANGS = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
EVAL_LANGUAGES = {
    "xnli": XNLI_LANGS,
    "pawsx": "de en es fr".split(),
    "nc": "de en es fr ru".split(),
    "qadsm": "de en fr".split(),
    "qam": "de en fr".split(),
    "wpr": "de en es fr it pt zh".split(),
    "ctkfacts_nli": ["cs"],
    "ctkfacts_xnli": ["cs"],
}
OPTIONAL_EVAL_LANGUAGES = {"pawsx": "ja ko zh".split()}  # when the original PAWS-X is present
TRAIN_LANGUAGE = {d: ("cs" if d.startswith("ctkfacts") else "en") for d in EVAL_LANGUAGES}
MC4_LANGS = "ar bg cs de el en es fr hi it ja ko pt ru sw th tr ur vi zh".split()
CONTRACT_MIXTURES = [
    "xglue_t2t",
    "xglue_cls",
    "xglue_mix_t2t",
    "xglue_mix_cls",
    "xglue_mc4_t2t",
    "ctkfacts_t2t",
    "ctkfacts_cls",
    "demo_t2t",
    "demo_cls",
]
LABELS = {
    "xnli": ["entailment", "neutral", "contradiction"],
    "pawsx": ["different", "same"],
    "qadsm": ["Bad", "Good"],
    "qam": ["False", "True"],
    "wpr": ["Bad", "Fair", "Good", "Excellent", "Perfect"],
    "ctkfacts_nli": ["SUPPORTS", "NOT ENOUGH INFO", "REFUTES"],
}


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "mtl_jax.inspect", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def listing() -> list[dict]:
    proc = _run_cli("--list", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_list_json_covers_every_dataset_language_pair_in_both_formats(listing):
    by_name = {r["name"]: r for r in listing}
    for r in listing:
        assert {"name", "kind", "dataset", "format", "languages", "splits"} <= set(r), r
        assert r["kind"] in ("task", "mixture")
    for dataset, languages in EVAL_LANGUAGES.items():
        for fmt in ("t2t", "cls"):
            for lang in languages + OPTIONAL_EVAL_LANGUAGES.get(dataset, []):
                name = f"{dataset}_{fmt}_{lang}"
                if lang not in languages and name not in by_name:
                    continue  # optional language not registered
                row = by_name.get(name)
                assert row is not None, f"{name} missing from --list --json"
                assert (row["kind"], row["dataset"], row["format"]) == ("task", dataset, fmt)
                assert row["languages"] == [lang]
                assert {"validation", "test"} <= set(row["splits"]), row
                assert ("train" in row["splits"]) == (lang == TRAIN_LANGUAGE[dataset]), row
    for lang in MC4_LANGS:
        row = by_name[f"mc4_t2t_{lang}"]
        assert (row["kind"], row["dataset"], row["format"]) == ("task", "mc4", "t2t")
        assert {"train", "validation"} <= set(row["splits"])
    for fmt in ("t2t", "cls"):
        row = by_name[f"xnli_mix_{fmt}"]
        assert row["splits"] == ["train"]
        assert sorted(row["languages"]) == sorted(XNLI_LANGS)
    for name in CONTRACT_MIXTURES:
        row = by_name[name]
        assert row["kind"] == "mixture"
        assert all(by_name[t]["kind"] == "task" for t in row["tasks"])
        assert all(by_name[t]["kind"] == "task" for t in row["evaluation_tasks"])


def test_mixture_evaluation_tasks_are_all_validation_tasks_of_its_datasets(listing):
    by_name = {r["name"]: r for r in listing}
    for fmt in ("t2t", "cls"):
        expected = {
            f"{d}_{fmt}_{lang}"
            for d in ("xnli", "pawsx", "nc", "qadsm", "qam", "wpr")
            for lang in EVAL_LANGUAGES[d]
        }
        for mix in (f"xglue_{fmt}", f"xglue_mix_{fmt}"):
            got = set(by_name[mix]["evaluation_tasks"])
            assert expected <= got and all(t.split("_")[0] == "pawsx" for t in got - expected)
        assert set(by_name[f"ctkfacts_{fmt}"]["evaluation_tasks"]) == {
            f"ctkfacts_nli_{fmt}_cs",
            f"ctkfacts_xnli_{fmt}_cs",
        }


def test_text_report_of_a_mixture_via_the_cli():
    proc = _run_cli("demo_cls", "-n", "1", "--max_examples", "50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "mixture demo_cls" in out
    assert "member tasks, normalised rates and examples per split" in out
    assert "token lengths on split 'train'" in out
    for task in ("xnli_mix_cls", "wpr_cls_en", "ctkfacts_nli_cls_cs"):
        assert f"{task}: 1 example(s) from 'train'" in out
    assert "label_name:" in out and "evaluation tasks (" in out


@pytest.fixture
def reset_sources():
    from mtl_jax.data import sources

    yield sources
    sources.reset_sources()


def _report(capsys, *argv: str) -> dict:
    assert cli.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_mixture_report_rates_counts_and_examples(capsys):
    from mtl_jax.data import mixtures, sources, tasks

    report = _report(capsys, "demo_t2t", "-n", "2", "--max_examples", "40")
    members = report["members"]
    assert [m["task"] for m in members] == list(mixtures.mixture_spec("demo_t2t").tasks)
    # demo mixtures use equal rates: 1/7 each.
    assert [m["rate"] for m in members] == pytest.approx([1 / 7] * 7)
    for m in members:
        info = tasks.task_info(m["task"])
        for split in info.splits:
            if info.dataset == "xnli_mix":  # the interleaved partitions of 15 translated sets
                rows = sources.load_xnli_mix(info.languages)
            else:
                rows = list(sources.iter_records(info.source_dataset, info.language, split))
            assert m["counts"][split] == len(rows), (m["task"], split)
        assert m["lengths"]["inputs"]["n"] == min(40, m["counts"]["train"])
        assert len(m["examples"]) == 2
        for ex in m["examples"]:
            assert ex["targets"] in info.label_names
            assert ex["task"] == info.head


def _tsv_rows(path: Path, n: int) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return list(itertools.islice(reader, n))


def _expected_stats(lengths: list[int], limit: int) -> dict:
    arr = np.asarray(lengths)
    return {
        "n": len(arr),
        "mean": pytest.approx(arr.mean()),
        "p95": int(np.percentile(arr, 95, method="inverted_cdf")),
        "max": int(arr.max()),
        "limit": limit,
        "truncated": pytest.approx(float((arr > limit).mean())),
    }


def _hf_tokenizer(kind: str, tmp_path: Path):
    """transformers' tokenizer over the bundled demo vocabulary of ``kind``."""
    pytest.importorskip("transformers")
    import helpers

    from mtl_jax.data import vocab

    d = tmp_path / kind
    d.mkdir()
    if kind == "mt5":
        (d / vocab.MT5_SPM_FILENAME).write_bytes(vocab.DEMO_T5_SPM.read_bytes())
    else:
        (d / vocab.XLMR_SPM_FILENAME).write_bytes(vocab.DEMO_XLMR_SPM.read_bytes())
    return helpers.hf_tokenizer(d, kind)


def test_length_statistics_match_transformers_on_real_xnli(
    capsys, shared_data, reset_sources, tmp_path
):
    """Token lengths of real XNLI dev rows, recomputed with transformers' tokenizers."""
    n = 150
    rows = _tsv_rows(shared_data / "xnli" / "dev-de.tsv", n)
    common = ["--split", "validation", "--max_examples", str(n), "-n", "1"]
    common += ["--source", f"xnli={shared_data / 'xnli'}"]

    xlmr = _hf_tokenizer("xlmr", tmp_path)
    report = _report(capsys, "xnli_cls_de", "--sequence_length", "inputs=48", *common)
    (member,) = report["members"]
    assert member["counts"]["validation"] == 2490
    a = [len(xlmr(p, add_special_tokens=False)["input_ids"]) for p, _, _ in rows]
    b = [len(xlmr(h, add_special_tokens=False)["input_ids"]) for _, h, _ in rows]
    # The converter's pair template <s> a </s></s> b </s> adds four tokens.
    total = [x + y + 4 for x, y in zip(a, b, strict=True)]
    assert member["lengths"]["inputs"] == _expected_stats(total, 48)
    assert member["lengths"]["text"]["max"] == max(a)
    assert member["examples"][0]["label_name"] == rows[0][2]

    t5 = _hf_tokenizer("mt5", tmp_path)
    report = _report(capsys, "xnli_t2t_de", "--sequence_length", "inputs=64,targets=3", *common)
    (member,) = report["members"]
    # Contract: "xnli: premise: ... hypothesis: ..." -> label name, EOS appended.
    inputs = [len(t5(f"xnli: premise: {p} hypothesis: {h}")["input_ids"]) for p, h, _ in rows]
    targets = [len(t5(label)["input_ids"]) for _, _, label in rows]
    assert member["lengths"]["inputs"] == _expected_stats(inputs, 64)
    assert member["lengths"]["targets"] == _expected_stats(targets, 3)
    assert member["examples"][0]["targets"] == rows[0][2]


def test_length_stats_and_sequence_length_parsing():
    lengths = [5, 1, 9, 9, 3, 7, 2, 8, 6, 4, 10, 30]
    s = cli.length_stats(lengths, 8)
    assert s == _expected_stats(lengths, 8)
    assert cli.length_stats([], 8) == {"n": 0}
    assert cli.parse_sequence_length("inputs=512, targets=8") == {"inputs": 512, "targets": 8}
    assert cli.parse_sequence_length(None) is None
    for bad in ("inputs", "inputs=0", "inputs=x", "=5"):
        with pytest.raises(ValueError, match="sequence_length"):
            cli.parse_sequence_length(bad)


def test_unknown_name_suggests_close_matches(capsys):
    assert cli.main(["xnli_t2t_dee"]) == 2
    err = capsys.readouterr().err
    assert "unknown task or mixture 'xnli_t2t_dee'" in err
    assert "did you mean" in err and "xnli_t2t_de" in err
    assert cli.main(["xglue_mixx_cls"]) == 2
    assert "xglue_mix_cls" in capsys.readouterr().err


def test_usage_errors(capsys):
    for argv in ([], ["--list", "xnli_t2t_de"], ["demo_t2t", "--sequence_length", "inputs"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    assert "sequence_length" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo_t2t", "--source", "nosuchdataset=bundled"])
    assert "nosuchdataset" in capsys.readouterr().err


def test_cli_module_does_not_import_tensorflow_or_seqio():
    source = (REPO / "mtl_jax" / "inspect.py").read_text()
    for mod in ("tensorflow", "seqio"):
        assert f"import {mod}" not in source and f"from {mod}" not in source
    # And importing it (for --help) does not pull them in.
    code = (
        "import sys, mtl_jax.inspect as m; m.build_parser().format_help(); "
        "print(sorted(k for k in ('tensorflow', 'seqio') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr
