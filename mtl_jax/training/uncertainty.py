"""MT-Uncertainty sampling (CA-MTL, Pilault et al. 2021, Algorithm 2): train on the examples of
a candidate pool the model is least sure about.

Each step the data layer hands a POOL of ``b`` examples from every task (``batch_mode=
'uncertainty'`` in :mod:`mtl_jax.data.batching`); the train step runs one forward pass over it
without gradients (dropout as in training), scores every example and trains on the top ``b``.
The score of example i of classification task t is

    U_i = Ĥ_i * H̄_t / max_s H̄_s,   Ĥ_i = H(p_i) / log C_t,   H̄_t = mean of Ĥ over t's pool rows

(normalised prediction entropy over the task's own C_t classes, weighted by the task's mean
entropy relative to the most uncertain task of the pool). We follow the paper's formula; the
reference code divides by ``log C + 1e-5``, which changes no ranking.

Regression tasks (one output) have no predictive distribution. The reference copies another
task's scores onto them; here they are sampled at their mixture rate instead: regression task t
is given ``quota_t`` of the ``b`` slots (largest-remainder apportionment of ``b`` by the
mixture's rates) and takes the first ``quota_t`` rows of its pool (the pool is already shuffled);
the remaining slots go to classification rows by ``U``.

Multi-host: the pool is ``num_shards`` blocks (block k from data shard k, see ``ShardedBatches``)
and every block selects its own ``b / num_shards`` rows with its own task means, so the choice
depends on the data-shard setting, never on how many processes share the work, and it is a pure
function of (parameters, pool, dropout key from (seed, step)): resume stays exact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from mtl_jax import features as F

# Scores outside [0, 1] that rank rows before (regression quota) or after (regression rows over
# quota, padding) every classification row.
_RESERVED, _EXCLUDED = 2.0, -1.0


def normalized_entropy(logits: jax.Array, num_labels: jax.Array) -> jax.Array:
    """``H(softmax(logits)) / log C`` per row over its first ``C = num_labels`` columns (the
    others are ignored); 0 for one-output rows."""
    logits = logits.astype(jnp.float32)
    valid = jnp.arange(logits.shape[-1])[None, :] < num_labels[:, None]
    logp = jax.nn.log_softmax(jnp.where(valid, logits, -jnp.inf), axis=-1)
    h = -jnp.sum(jnp.where(valid, jnp.exp(logp) * logp, 0.0), axis=-1)
    log_c = jnp.log(jnp.maximum(num_labels, 1).astype(jnp.float32))
    return jnp.where(num_labels > 1, h / jnp.where(num_labels > 1, log_c, 1.0), 0.0)


def regression_quotas(rates: Sequence[float], regression: Sequence[bool], rows: int) -> tuple[int, ...]:
    """Slots of ``rows`` reserved per task: each regression task's largest-remainder share of
    ``rows`` by ``rates`` (every task, classification included, takes part in the
    apportionment); 0 for classification tasks."""
    total = float(sum(rates))
    if total <= 0:
        raise ValueError(f"rates must not all be 0, got {list(rates)}")
    exact = [rows * r / total for r in rates]
    seats = [math.floor(x) for x in exact]
    order = sorted(range(len(rates)), key=lambda i: (-(exact[i] - seats[i]), i))
    for i in order[: rows - sum(seats)]:
        seats[i] += 1
    return tuple(s if reg else 0 for s, reg in zip(seats, regression, strict=True))


def block_scores(entropy: jax.Array, task_id: jax.Array, real: jax.Array,
                 regression: jax.Array, quota: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scores of one shard's pool rows (``[rows]`` each; ``regression``/``quota`` per task) and
    each task's mean normalised entropy (``-1`` for tasks without classification rows)."""
    num_tasks = regression.shape[0]
    onehot = jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32) * real[:, None]
    counts = onehot.sum(0)
    mean = (onehot * entropy[:, None]).sum(0) / jnp.maximum(counts, 1.0)
    scored = (counts > 0) & ~regression
    top = jnp.max(jnp.where(scored, mean, 0.0))
    weight = jnp.where(top > 0, mean / jnp.where(top > 0, top, 1.0), 1.0)
    score = entropy * weight[task_id]
    rank = jnp.sum(jnp.cumsum(onehot, axis=0) * onehot, axis=1) - 1  # row's place in its task
    reserved = rank < quota[task_id]
    score = jnp.where(regression[task_id], jnp.where(reserved, _RESERVED, _EXCLUDED), score)
    return jnp.where(real > 0, score, _EXCLUDED), jnp.where(scored, mean, -1.0)


@dataclasses.dataclass(frozen=True)
class UncertaintySampler:
    """Selects the training batch from a pool inside the compiled step.

    ``num_labels``: classes per task id (1 = regression); ``quotas``: slots reserved per task
    id in each shard's selection (:func:`regression_quotas`); ``num_shards``: data shards of the
    pool; ``batch_size``: global rows to keep.
    """

    num_labels: tuple[int, ...]
    quotas: tuple[int, ...]
    num_shards: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.batch_size % self.num_shards:
            raise ValueError(f"batch size {self.batch_size} is not divisible by "
                             f"{self.num_shards} data shards")
        if len(self.quotas) != len(self.num_labels):
            raise ValueError(f"{len(self.quotas)} quotas for {len(self.num_labels)} tasks")
        if sum(self.quotas) > self.batch_size // self.num_shards:
            raise ValueError(f"regression quotas {self.quotas} exceed the "
                             f"{self.batch_size // self.num_shards} rows of a shard")

    def select(self, entropy: jax.Array, batch: Mapping[str, jax.Array]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Global row indices ``[batch_size]`` of the pool to train on (ascending per shard)
        and the per-task metrics ``selected_fraction`` and ``pool_entropy`` (``-1``: the task
        is absent from the pool, or has no entropy)."""
        rows = entropy.shape[0]
        if rows % self.num_shards:
            raise ValueError(f"a pool of {rows} rows does not split into {self.num_shards} shards")
        per_shard, keep = rows // self.num_shards, self.batch_size // self.num_shards
        if keep > per_shard:
            raise ValueError(f"cannot keep {keep} of a shard's {per_shard} pool rows")
        task_id = batch[F.TASK_ID].astype(jnp.int32)
        real = (jnp.sum(batch[F.ATTENTION_MASK], axis=-1) > 0).astype(jnp.float32)
        regression = jnp.asarray([n == 1 for n in self.num_labels])
        quota = jnp.asarray(self.quotas, jnp.int32)
        shape = (self.num_shards, per_shard)
        scores, _ = jax.vmap(block_scores, in_axes=(0, 0, 0, None, None))(
            entropy.reshape(shape), task_id.reshape(shape), real.reshape(shape), regression, quota)
        _, top = jax.lax.top_k(scores, keep)  # ties: the lower index first
        index = (jnp.sort(top, axis=-1) + per_shard * jnp.arange(self.num_shards)[:, None]).ravel()
        # Metrics over the whole pool (every shard's rows together).
        _, mean = block_scores(entropy, task_id, real, regression, quota)
        num_tasks = len(self.num_labels)
        in_pool = jnp.zeros(num_tasks).at[task_id].add(real) > 0
        chosen = jnp.zeros(num_tasks).at[task_id[index]].add(real[index])
        fraction = jnp.where(in_pool, chosen / jnp.maximum(jnp.sum(real[index]), 1.0), -1.0)
        return index, {"selected_fraction": fraction, "pool_entropy": mean}
