"""Greedy decoding (cached and uncached) and rank classification against transformers (PyTorch)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import helpers  # noqa: E402

from mtl_jax.models import hf_t5  # noqa: E402
from mtl_jax.models.t5 import T5Config  # noqa: E402
from mtl_jax.models.t5_decoding import greedy_decode, rank_classification, shift_right  # noqa: E402

STEPS = 14


def _encoder_inputs(vocab: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, vocab, (5, 11))
    enc[1, 6:] = 0
    enc[3, 3:] = 0
    return enc


def _hf_generate(hf, enc: np.ndarray, steps: int) -> np.ndarray:
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc != 0).long(),
            max_new_tokens=steps,
            do_sample=False,
            num_beams=1,
        )
    return out.numpy()[:, 1:]  # drop the decoder start token


@helpers.fast_jit
def _greedy_cached(model, enc):
    return greedy_decode(model, enc, STEPS)


@helpers.fast_jit
def _greedy_cached_no_stop(model, enc):
    return greedy_decode(model, enc, STEPS, stop_at_eos=False)


@helpers.fast_jit
def _greedy_uncached_no_stop(model, enc):
    return greedy_decode(model, enc, STEPS, use_cache=False, stop_at_eos=False)


def _mt5_with_eos() -> object:
    """mT5 config whose EOS logit is boosted so some rows stop early (steps 1-4) and one row runs
    all 14 steps: exercises EOS handling and the >= 10 step comparison together."""
    hf = helpers.make_hf("mt5_b")
    with torch.no_grad():
        hf.lm_head.weight[1] *= 2.0
    return hf


def test_greedy_cached_matches_hf_generate_mt5():
    hf = _mt5_with_eos()
    enc = _encoder_inputs(hf.config.vocab_size)
    ref = _hf_generate(hf, enc, STEPS)
    ours = np.asarray(_greedy_cached(helpers.ours_from_hf(hf), jnp.asarray(enc)))
    assert ours.shape == (5, STEPS)
    n = ref.shape[1]
    np.testing.assert_array_equal(ours[:, :n], ref)
    assert (ours[:, n:] == 0).all()  # HF stops once all rows are done; we pad the rest
    eos_rows = [(r == 1).any() for r in ours]
    assert any(eos_rows) and not all(eos_rows), "test needs rows with and without EOS"
    assert n >= 10 and max(int(np.argmax(r == 1)) if (r == 1).any() else STEPS for r in ours) >= 10
    # After EOS only pads, as transformers does.
    for r in ours:
        if (r == 1).any():
            assert (r[int(np.argmax(r == 1)) + 1 :] == 0).all()


def test_greedy_cached_matches_hf_generate_tied_t5():
    hf = helpers.make_hf("t5_gated_b")
    enc = _encoder_inputs(hf.config.vocab_size, seed=8)
    ref = _hf_generate(hf, enc, STEPS)
    ours = np.asarray(_greedy_cached(helpers.ours_from_hf(hf), jnp.asarray(enc)))
    assert ref.shape == (5, STEPS)
    np.testing.assert_array_equal(ours, ref)


def test_cached_and_uncached_decoding_agree():
    hf = _mt5_with_eos()
    model = helpers.ours_from_hf(hf)
    enc = jnp.asarray(_encoder_inputs(hf.config.vocab_size, seed=9))
    cached = np.asarray(_greedy_cached_no_stop(model, enc))
    uncached = np.asarray(_greedy_uncached_no_stop(model, enc))
    np.testing.assert_array_equal(cached, uncached)
    assert (cached == 1).any()  # EOS appears, decoding went on through it (stop_at_eos=False)
    # The EOS-stopping decode is the same sequence up to each row's first EOS, then pads.
    stopped = np.asarray(_greedy_cached(model, enc))
    for full, stop in zip(cached, stopped, strict=True):
        end = int(np.argmax(full == 1)) + 1 if (full == 1).any() else STEPS
        np.testing.assert_array_equal(stop[:end], full[:end])
        assert (stop[end:] == 0).all()


def _hf_label_log_likelihood(hf, row: np.ndarray, candidates: list[list[int]]) -> np.ndarray:
    """[C] summed log p(candidate | input) from HF, one unpadded candidate at a time."""
    ids = torch.tensor(row[row != 0][None])
    scores = []
    for cand in candidates:
        with torch.no_grad():
            logits = hf(input_ids=ids, labels=torch.tensor([cand])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        scores.append(logp[torch.arange(len(cand)), torch.tensor(cand)].sum().item())
    return np.array(scores)


def _pad(candidates: list[list[int]], length: int = 4) -> np.ndarray:
    out = np.zeros((len(candidates), length), np.int64)
    for c, cand in enumerate(candidates):
        out[c, : len(cand)] = cand
    return out


@pytest.mark.parametrize("name", ["mt5_b", "t5_relu_a"])
def test_rank_classification_matches_hf(name):
    hf = helpers.make_hf(name)
    model = helpers.ours_from_hf(hf)
    enc = _encoder_inputs(hf.config.vocab_size, seed=11)
    base = [[5, 1], [9, 17, 1], [23, 4, 30, 1], [12, 1]]  # label strings + EOS, ragged lengths
    rank = helpers.fast_jit(rank_classification)

    # One candidate list for all examples ([C, Lt]).
    ref = np.stack([_hf_label_log_likelihood(hf, row, base) for row in enc])
    pred, scores = rank(model, jnp.asarray(enc), jnp.asarray(_pad(base)))
    np.testing.assert_allclose(np.asarray(scores), ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(pred), ref.argmax(-1))

    # Per-example candidate lists ([B, C, Lt]), each in its own order, so the answer index varies.
    per_example = [base[b % 4 :] + base[: b % 4] for b in range(len(enc))]
    ref = np.stack(
        [
            _hf_label_log_likelihood(hf, row, cands)
            for row, cands in zip(enc, per_example, strict=True)
        ]
    )
    pred, scores = rank(
        model, jnp.asarray(enc), jnp.asarray(np.stack([_pad(c) for c in per_example]))
    )
    np.testing.assert_allclose(np.asarray(scores), ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(pred), ref.argmax(-1))
    assert len(set(ref.argmax(-1).tolist())) > 1


def test_shift_right_and_input_checks():
    np.testing.assert_array_equal(
        np.asarray(shift_right(jnp.array([[5, 6, 1, 0]]))), [[0, 5, 6, 1]]
    )
    hf = helpers.make_hf("mt5_c")
    model = hf_t5.model_from_hf_state(helpers.hf_state(hf), T5Config.from_hf(hf.config.to_dict()))
    with pytest.raises(ValueError, match="candidate_targets"):
        rank_classification(model, jnp.ones((2, 3), jnp.int32), jnp.ones((3, 2, 2), jnp.int32))
    with pytest.raises(ValueError, match="max_decode_len"):
        greedy_decode(model, jnp.ones((2, 3), jnp.int32), 0)
