"""Tokenizer parity: our seqio vocabularies against transformers' tokenizers on the same .model file.

The reference is transformers' own ``T5Tokenizer`` / ``XLMRobertaTokenizer`` built from the file
(transformers 5 converts the SentencePiece model into a ``tokenizers`` backend, an implementation
independent of both sentencepiece and tensorflow-text), on text in every script the tasks use.
"""

from __future__ import annotations

import copy
import pickle
import shutil
import unicodedata
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("seqio")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

import helpers  # noqa: E402

from mtl_jax.data import vocab as V  # noqa: E402

# Training text for the throwaway models (one or two lines per script). The throwaway models are
# also trained on the test sentences (except the emoji/symbol ones, which stay unknown) so every
# script round-trips; a 400-piece vocabulary still splits most words into several pieces.
TRAIN_TEXT = [
    "Příliš žluťoučký kůň úpěl ďábelské ódy. Soud rozhodl o tom, že vláda musí zaplatit.",
    "Ministerstvo zdravotnictví oznámilo nová opatření proti šíření nemoci v České republice.",
    "The quick brown fox jumps over the lazy dog while the children are playing outside.",
    "Le gouvernement français a annoncé de nouvelles mesures économiques pour l'année prochaine.",
    "Die Bundesregierung hat heute über die Größe des Haushalts für das nächste Jahr entschieden.",
    "El presidente de España visitó la ciudad y habló con los niños sobre el futuro del país.",
    "A cidade de São Paulo é a maior do Brasil e tem muitos museus e restaurantes famosos.",
    "Il governo italiano ha approvato la legge sulla scuola e sull'università pubblica.",
    "Hükümet bugün yeni ekonomik önlemleri açıkladı ve vatandaşlar çok memnun kaldı.",
    "Chính phủ Việt Nam đã công bố kế hoạch phát triển kinh tế cho năm tới.",
    "Serikali ya Kenya imetangaza mpango mpya wa elimu kwa watoto wote nchini.",
    "Правительство России объявило о новых мерах поддержки экономики в этом году.",
    "Българското правителство прие нов закон за образованието и здравеопазването.",
    "Η ελληνική κυβέρνηση ανακοίνωσε νέα μέτρα για την οικονομία και την παιδεία.",
    "أعلنت الحكومة المصرية عن إجراءات اقتصادية جديدة لدعم المواطنين في العام القادم.",
    "सरकार ने आज नई आर्थिक नीतियों की घोषणा की और लोगों ने उनका स्वागत किया।",
    "รัฐบาลไทยประกาศมาตรการทางเศรษฐกิจใหม่เพื่อช่วยเหลือประชาชนในปีหน้า",
    "中国政府今天宣布了新的经济政策，以支持明年的发展和人民的生活。",
    "حکومت پاکستان نے آج نئی اقتصادی پالیسیوں کا اعلان کیا اور عوام نے خیر مقدم کیا۔",
    "日本政府は新しい経済政策を発表しました。한국 정부는 새로운 정책을 발표했습니다.",
]

# Test sentences per script (not in the training text).
TEST_TEXT = {
    "czech": "Žádný účet nebyl uzavřen; čtvrť Řeporyje dostala ústní odpověď.",
    "latin_diacritics": "Ça coûte déjà trop cher, señor; Mädchen über Brücken; ação e coração.",
    "turkish_vietnamese": "Öğretmen şehirde yaşıyor. Người dân ở Hà Nội rất thân thiện.",
    "cyrillic": "Новый закон вступит в силу через месяц, сообщили в министерстве.",
    "greek": "Οι μαθητές διαβάζουν βιβλία στη βιβλιοθήκη κάθε απόγευμα.",
    "arabic": "يذهب الطلاب إلى المدرسة كل صباح ويقرؤون الكتب في المكتبة.",
    "devanagari": "छात्र हर सुबह स्कूल जाते हैं और पुस्तकालय में किताबें पढ़ते हैं।",
    "thai": "นักเรียนไปโรงเรียนทุกเช้าและอ่านหนังสือในห้องสมุด",
    "chinese": "学生们每天早上去学校，在图书馆里读书。",
    "urdu": "طلباء ہر صبح اسکول جاتے ہیں اور کتب خانے میں کتابیں پڑھتے ہیں۔",
    "swahili": "Wanafunzi huenda shuleni kila asubuhi na kusoma vitabu maktabani.",
    "empty": "",
    "spaces_only": "    ",
    "whitespace_runs": "  two  spaces,\tthen\t\ttabs\nand a\n\nnewline   ",
    "emoji": "Great job 👍🏽 see you 🇨🇿 tomorrow 😀!",
    "digits_punct": "Price: 1 234,56 Kč (–15 %) — “quoted” «text».",
    "sentinel_text": "before <extra_id_0> middle <extra_id_7> after",
}
CASES = sorted(TEST_TEXT)
UNCOVERED = ("emoji", "sentinel_text", "digits_punct")  # kept out of the throwaway training text
COVERED = [c for c in CASES if c not in UNCOVERED]


def _train(path_prefix: Path, **kwargs) -> Path:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((TRAIN_TEXT + [TEST_TEXT[c] for c in COVERED]) * 3),
        model_prefix=str(path_prefix),
        vocab_size=400,
        hard_vocab_limit=False,
        character_coverage=1.0,
        model_type="unigram",
        minloglevel=2,
        **kwargs,
    )
    return path_prefix.with_suffix(".model")


@pytest.fixture(scope="session")
def tmp_models(tmp_path_factory) -> dict[str, Path]:
    """Throwaway SentencePiece models in the T5 layout and the default (XLM-R) layout."""
    d = tmp_path_factory.mktemp("spm")
    t5 = _train(d / "t5", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    xlmr = _train(d / "xlmr")  # sentencepiece defaults: unk 0, <s> 1, </s> 2, as fairseq's model
    return {"mt5": t5, "xlmr": xlmr}


def _hf_dir(tmp: Path, model_file: Path, kind: str) -> Path:
    """An HF-layout checkpoint directory holding only the vocabulary file."""
    name = V.MT5_SPM_FILENAME if kind == "mt5" else V.XLMR_SPM_FILENAME
    d = tmp / f"hf_{kind}_{model_file.stem}"
    d.mkdir(exist_ok=True)
    shutil.copy(model_file, d / name)
    return d


@pytest.fixture(scope="session", params=["mt5", "xlmr"])
def pair(request, tmp_models, tmp_path_factory):
    """(kind, our vocabulary, transformers tokenizer) built from the same throwaway model."""
    kind = request.param
    d = _hf_dir(tmp_path_factory.mktemp("hf"), tmp_models[kind], kind)
    ours = V.mt5_vocabulary(d) if kind == "mt5" else V.xlmr_vocabulary(d)
    return kind, ours, helpers.hf_tokenizer(d, kind)


def _ref_ids(hf, text: str) -> list[int]:
    return hf(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("case", CASES)
def test_python_encode_matches_transformers(pair, case):
    _, ours, hf = pair
    text = TEST_TEXT[case]
    assert list(ours.encode(text)) == _ref_ids(hf, text)


def test_tf_encode_matches_transformers_scalar_and_in_dataset(pair):
    _, ours, hf = pair
    texts = [TEST_TEXT[c] for c in CASES]
    for text in texts:
        assert ours.encode_tf(tf.constant(text)).numpy().tolist() == _ref_ids(hf, text), text
    # Inside tf.data (graph mode), which is how seqio's tokenize preprocessor calls it.
    ds = tf.data.Dataset.from_tensor_slices(texts).map(ours.encode_tf)
    for text, ids in zip(texts, ds.as_numpy_iterator(), strict=True):
        assert ids.tolist() == _ref_ids(hf, text), text


def test_seqio_tokenize_preprocessor(pair):
    import seqio

    _, ours, hf = pair
    texts = [TEST_TEXT["czech"], TEST_TEXT["thai"], TEST_TEXT["empty"]]
    ds = tf.data.Dataset.from_tensor_slices({"text": texts})
    out = seqio.preprocessors.tokenize(
        ds, {"text": seqio.Feature(ours, add_eos=False)}, copy_pretokenized=False
    )
    got = [ex["text"].tolist() for ex in out.as_numpy_iterator()]
    assert got == [_ref_ids(hf, t) for t in texts]


def test_special_ids_and_sizes_match_transformers(pair, tmp_models):
    kind, ours, hf = pair
    n_pieces = spm.SentencePieceProcessor(model_file=str(tmp_models[kind])).GetPieceSize()
    assert ours.vocab_size == len(hf)
    assert ours.eos_id == hf.eos_token_id
    assert ours.pad_id == hf.pad_token_id
    assert ours.unk_id == hf.unk_token_id
    if kind == "mt5":
        assert (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2)
        assert ours.vocab_size == n_pieces + 100
        sentinels = [hf.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(100)]
        assert sentinels == [ours.vocab_size - 1 - i for i in range(100)]
    else:
        assert (ours.bos_id, ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2, 3)
        assert ours.bos_id == hf.bos_token_id
        assert ours.mask_id == hf.mask_token_id == n_pieces + 1 == ours.vocab_size - 1


def _expected_roundtrip(text: str) -> str:
    # nmt_nfkc normalisation + whitespace collapsing, as SentencePiece's default normaliser does.
    return " ".join(unicodedata.normalize("NFKC", text).split())


@pytest.mark.parametrize("case", COVERED)
def test_decode_round_trip_python_and_tf(pair, case):
    _, ours, hf = pair
    text = TEST_TEXT[case]
    ids = list(ours.encode(text))
    assert ours.unk_id not in ids
    expected = _expected_roundtrip(text)
    assert ours.decode(ids) == expected
    assert ours.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == expected
    assert hf.decode(_ref_ids(hf, text), skip_special_tokens=True) == expected


def test_decode_stops_at_eos_and_drops_padding(pair):
    _, ours, _ = pair
    a, b = TEST_TEXT["cyrillic"], TEST_TEXT["greek"]
    ids = list(ours.encode(a)) + [ours.eos_id] + list(ours.encode(b)) + [ours.pad_id] * 3
    assert ours.decode(ids) == _expected_roundtrip(a)
    assert ours.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == _expected_roundtrip(a)
    padded = list(ours.encode(b)) + [ours.pad_id] * 4
    assert ours.decode(padded) == _expected_roundtrip(b)
    batch = tf.constant([padded, list(ours.encode(b)[:2]) + [ours.pad_id] * (len(padded) - 2)])
    out = [s.decode() for s in ours.decode_tf(batch).numpy()]
    assert out == [_expected_roundtrip(b), ours.decode(list(ours.encode(b))[:2])]


def test_unknown_and_emoji_python_equals_tf(pair):
    _, ours, _ = pair
    for case in UNCOVERED:
        ids = list(ours.encode(TEST_TEXT[case]))
        if case == "emoji":
            assert ours.unk_id in ids
        assert ours.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == ours.decode(ids)


def test_mt5_sentinel_text_encodes_to_the_top_id(tmp_models):
    """`<extra_id_0>` is the highest id, as T5 span corruption expects."""
    ours = V.mt5_vocabulary(tmp_models["mt5"])
    sentinel0 = ours.vocab_size - 1
    assert ours.encode("<extra_id_0>")[-1] == sentinel0


def test_directory_and_file_give_same_vocabulary(tmp_models, tmp_path):
    for kind, load in (("mt5", V.mt5_vocabulary), ("xlmr", V.xlmr_vocabulary)):
        from_dir = load(_hf_dir(tmp_path, tmp_models[kind], kind))
        from_file = load(tmp_models[kind])
        assert from_dir.vocab_size == from_file.vocab_size
        assert list(from_dir.encode(TEST_TEXT["czech"])) == list(
            from_file.encode(TEST_TEXT["czech"])
        )
        assert V.load_vocabulary(kind, tmp_models[kind]).vocab_size == from_file.vocab_size


def test_missing_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope" / "spiece.model"
    with pytest.raises(FileNotFoundError, match="nope"):
        V.mt5_vocabulary(missing)
    empty_dir = tmp_path / "ckpt"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match=r"ckpt.*spiece\.model"):
        V.mt5_vocabulary(empty_dir)
    with pytest.raises(FileNotFoundError, match=r"ckpt.*sentencepiece\.bpe\.model"):
        V.xlmr_vocabulary(empty_dir)
    with pytest.raises(ValueError, match="unknown vocabulary kind"):
        V.load_vocabulary("bert", empty_dir)


def test_wrong_layout_is_rejected(tmp_models, tmp_path):
    with pytest.raises(ValueError, match="T5 layout"):
        V.mt5_vocabulary(tmp_models["xlmr"])
    with pytest.raises(ValueError, match="fairseq"):
        V.xlmr_vocabulary(tmp_models["mt5"])
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\xff\x00not a model")
    with pytest.raises(ValueError, match="junk.model"):
        V.mt5_vocabulary(junk)


def test_xlmr_vocabulary_survives_pickle_and_deepcopy(tmp_models):
    ours = V.xlmr_vocabulary(tmp_models["xlmr"])
    text = TEST_TEXT["arabic"]
    for other in (pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours)):
        assert other == ours
        assert list(other.encode(text)) == list(ours.encode(text))


# --- the committed demo models --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mt5", "xlmr"])
def test_demo_vocabulary_matches_transformers(kind, tmp_path):
    demo_file = V.DEMO_T5_SPM if kind == "mt5" else V.DEMO_XLMR_SPM
    assert demo_file.is_file(), f"committed demo model missing: {demo_file}"
    ours = V.demo_vocabulary(kind)
    hf = helpers.hf_tokenizer(_hf_dir(tmp_path, demo_file, kind), kind)
    assert ours.vocab_size == len(hf)
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (
        hf.pad_token_id,
        hf.eos_token_id,
        hf.unk_token_id,
    )
    for case in CASES:
        text = TEST_TEXT[case]
        ref = _ref_ids(hf, text)
        assert list(ours.encode(text)) == ref, case
        assert ours.encode_tf(tf.constant(text)).numpy().tolist() == ref, case
    # The demo models are trained on text of every task language: no script falls back to unk.
    for case in ("czech", "cyrillic", "greek", "arabic", "devanagari", "thai", "urdu"):
        assert ours.unk_id not in ours.encode(TEST_TEXT[case]), case
