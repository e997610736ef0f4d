"""``tools/benchmark.py --peer hf``: the transformers train step it races is the same computation.

The reference is transformers' PyTorch model itself: built from our initial weights (through the
HF export) and fed the very batches our compiled step reads, its loss must equal ours (dropout off)
at the first step, and, with AdamW on both sides (same hyper-parameters, same decay mask), after
each update too: same shapes, same tokens in the loss, same optimizer. Adafactor is checked at the
first step only (its factoring rule differs: tools/benchmark_peer.py). A smoke run of the CLI
checks the printed and saved ratios.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import helpers  # noqa: E402

TINY = {
    "mt5_tiny": ["--layers", "1", "--vocab", "300", "--inputs", "16", "--targets", "6"],
    "xlmr_tiny": ["--layers", "1", "--vocab", "300", "--inputs", "16", "--task_labels", "3"],
}


@pytest.mark.parametrize("model,optimizer,steps", [
    ("xlmr_tiny", "adamw", 3),
    ("mt5_tiny", "adamw", 3),
    pytest.param("mt5_tiny", "adafactor", 2, marks=pytest.mark.slow),
])
def test_peer_step_computes_our_loss(model, optimizer, steps, fast_compiles):
    bench, peer_tool = helpers.tool_module("benchmark"), helpers.tool_module("benchmark_peer")
    args = bench.parse_args(["--model", model, "--batch", "8", "--min_fill", "0.5",
                             "--dropout", "off", "--optimizer", optimizer, *TINY[model]])
    ours = bench.build_variant("ours", args, bench.sizes_from_table(model), "float32")
    # Padding is real: the loss must skip the same tokens / the same rows.
    batch = jax.device_get(ours.batches[0])
    weights = batch.get("decoder_loss_weights", batch.get("attention_mask"))
    assert 0 < weights.sum() < weights.size
    (peer,) = peer_tool.build_peers(bench, ours, ("eager",))  # ran the peer's step on batch 0
    theirs = [float(peer.compiled.last_loss)]
    theirs += [float(peer.compiled(None, peer.batches[i % 2])[1]) for i in range(1, steps)]
    mine = []
    for i in range(steps):
        ours.state, metrics = ours.compiled(ours.state, ours.batches[i % 2])
        mine.append(float(metrics["loss"]))
    # Adafactor: equal before the first update; after it, the factoring rules differ (loosely equal).
    np.testing.assert_allclose(mine[:1], theirs[:1], rtol=2e-5)
    np.testing.assert_allclose(mine, theirs, rtol=2e-5 if optimizer == "adamw" else 2e-2)
    assert len(set(np.round(mine, 6))) == steps  # the updates moved the loss


@pytest.mark.slow
def test_benchmark_peer_smoke(tmp_path, capsys):
    """The CLI runs ours, HF eager and HF torch.compile interleaved and reports ours/peer ratios."""
    out = tmp_path / "peer.json"
    helpers.tool_module("benchmark").main(
        ["--model", "xlmr_tiny", *TINY["xlmr_tiny"], "--task_labels", "3,2", "--batch", "8",
         "--steps", "2", "--warmup", "1", "--peer", "hf", "--json", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["results"]] == ["run", "hf eager", "hf compile"]
    for key in ("run / hf eager", "run / hf compile"):
        assert key in printed
        r = saved["peer"]["ratios"][key]
        assert 0 < r["p10"] <= r["median"] <= r["p90"]
    assert saved["config"]["task_num_labels"] == [3]  # one task head, as the peer has
    assert all(len(r["step_times_s"]) == 2 for r in saved["results"])
