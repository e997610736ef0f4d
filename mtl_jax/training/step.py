"""The compiled train and eval steps.

``make_train_step`` returns a ``jax.jit`` function with explicit in/out shardings that donates
the state. Gradient accumulation over ``micro_batches`` happens *inside* the compiled step with a
``lax.scan``: the effective batch is split into micro-batches, each contributes the gradient of
its loss *numerator* and its additive loss terms (see ``objectives``), and at the end

    grads = sum_i grad(numerator_i) * loss_scale(sum_i denominator_i)

which equals the gradient of the whole batch computed at once, for every normalisation (mean over
the effective batch's real tokens/examples, a constant factor, or a plain sum). Micro-batch ``i``
takes rows ``i, i + m, i + 2m, ...`` of the batch, so every micro-batch stays evenly split over the
data-parallel devices without moving data. An effective batch can therefore hold batches of many
tasks (heterogeneous effective batch) at the memory cost of one micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtl_jax import features as F
from mtl_jax.training import partitioning as part
from mtl_jax.training.objectives import Batch, LossTerms, Objective, loss_scale
from mtl_jax.training.optimizers import Optimizer
from mtl_jax.training.pcgrad import is_task_specific
from mtl_jax.training.teacher import teacher_params
from mtl_jax.training.train_state import TrainState, merge_model, step_key
from mtl_jax.training.uncertainty import UncertaintySampler, normalized_entropy

Metrics = dict[str, jax.Array]
BatchShardings = NamedSharding | Mapping[str, NamedSharding]


class CompiledStep:
    """A jitted step that runs under the mesh and logical-axis-rules contexts, so model code may
    use logical sharding constraints. ``.jitted`` is the bare ``jax.jit`` function."""

    def __init__(self, jitted: Any, mesh: Mesh, rules: part.Rules) -> None:
        self.jitted = jitted
        self.mesh = mesh
        self.rules = rules

    def __call__(self, *args: Any) -> Any:
        with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
            return self.jitted(*args)

    def lower(self, *args: Any) -> Any:
        with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
            return self.jitted.lower(*args)


def _split_micro_batches(
    batch: Batch, micro_batches: int, mesh: Mesh, rules: part.Rules
) -> Batch:
    """``[B, ...] -> [m, B/m, ...]`` with micro-batch ``i`` = rows ``i::m`` (stays data-parallel)."""
    axes = part.batch_axes(mesh, rules)
    out = {}
    for key, x in batch.items():
        b = x.shape[0]
        if b % micro_batches:
            raise ValueError(
                f"batch feature {key!r} has {b} rows, not divisible by micro_batches={micro_batches}"
            )
        y = x.reshape((b // micro_batches, micro_batches) + x.shape[1:]).swapaxes(0, 1)
        sharding = NamedSharding(mesh, PartitionSpec(None, axes))
        out[key] = jax.lax.with_sharding_constraint(y, sharding)
    return out


# RNG streams of a step, all derived from (seed, step) so resume stays exact: dropout keys are
# ``fold_in(step_key, micro_batch)`` (unchanged since the first release); the noise stream (R3F)
# is ``fold_in(step_key, NOISE_STREAM)``, one key for the whole effective batch, and objectives
# make per-row noise from it with the batch's ``row_index``.
NOISE_STREAM = 0x6E6F6973
# Dropout of the MT-Uncertainty scoring pass: ``fold_in(fold_in(step_key, SELECT_STREAM), chunk)``.
SELECT_STREAM = 0x73656C63


def make_train_step(
    graphdef: nnx.GraphDef,
    objective: Objective,
    optimizer: Optimizer,
    mesh: Mesh,
    state_shardings: TrainState,
    batch_shardings: BatchShardings,
    micro_batches: int = 1,
    *,
    rules: part.Rules = part.T5X_RULES,
    deterministic: bool = False,
    donate: bool = True,
    combiner: Any = None,
    sampler: UncertaintySampler | None = None,
) -> CompiledStep:
    """``step(state, batch) -> (new_state, metrics)``, compiled once per batch shape.

    Stages: (a) gradients and additive loss terms, accumulated over ``micro_batches`` (one
    gradient per task when there is a ``combiner``); (b) the optional ``combiner``
    (``combine(task_grads, present, key, shared) -> grads``, e.g. ``pcgrad.PCGrad``) turns the
    per-task gradients into one; (c) the optimizer update, skipped when anything is not finite.

    ``metrics``: ``loss``, ``z_loss``, ``per_task_loss`` / ``per_task_weight`` (``[num_tasks]``),
    ``weight`` (real target tokens or examples in the effective batch), ``grad_norm`` (global norm
    of the trainable gradients), ``learning_rate`` (of this update), ``skipped`` (1 when the
    loss, the gradient norm or the update was not finite: the update was not applied, the
    step counter still advanced; see docs/faults.md) and every extra term the objective names
    (e.g. ``r3f_kl``). ``deterministic=True`` turns dropout off. The model's non-trainable state
    is read, not written, by the forward passes; after the update the model's ``post_update``
    hook (if it has one: R4F's power iteration) may move it on. An objective with
    ``uses_teacher`` (SMART with ``mu > 0``) also gets ``teacher=``, the model at the momentum
    teacher's parameters kept in the optimizer state (``training/teacher.py``).

    With a ``sampler`` (MT-Uncertainty, ``training/uncertainty.py``) the step is handed a pool
    and first selects the batch: one forward pass over the pool in ``micro_batches`` chunks, no
    gradients, dropout unless ``deterministic``; metrics gain ``selected_fraction`` and
    ``pool_entropy`` (``[num_tasks]``).
    """
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        with nnx.logical_axis_rules(rules):
            key = step_key(state.rng, state.step)
            noise_key = jax.random.fold_in(key, NOISE_STREAM)
            selection: Metrics = {}
            if sampler is not None:
                batch, selection = _select(state, batch, jax.random.fold_in(key, SELECT_STREAM))
            # Differentiate only the trainable leaves: frozen ones enter as constants, so their
            # backward pass and accumulators do not exist at all (LoRA over a frozen base).
            leaves, treedef = jax.tree.flatten(state.params)
            frozen = treedef.flatten_up_to(optimizer.frozen_mask(state.params))
            train_idx = [i for i, f in enumerate(frozen) if not f]
            train_sh = [treedef.flatten_up_to(state_shardings.params)[i] for i in train_idx]
            train = [leaves[i] for i in train_idx]
            teacher = _teacher_params(objective, state)

            def terms_of(train: list[jax.Array], batch: Batch, key: jax.Array) -> LossTerms:
                full = list(leaves)
                for j, i in enumerate(train_idx):
                    full[i] = train[j]
                model = merge_model(graphdef, treedef.unflatten(full), state.rest)
                rngs = nnx.Rngs(dropout=key, noise=noise_key)
                if teacher is None:
                    return objective.terms(model, batch, deterministic=deterministic, rngs=rngs)
                return objective.terms(model, batch, deterministic=deterministic, rngs=rngs,
                                       teacher=merge_model(graphdef, teacher, state.rest))

            def constrain(grads: list[jax.Array]) -> list[jax.Array]:
                return jax.lax.with_sharding_constraint(grads, train_sh)

            # (a) gradients of the loss numerator and the additive terms.
            batch = {**batch, F.ROW_INDEX: _row_index(batch, mesh, rules)}

            def numerator(t: list[jax.Array], b: Batch, k: jax.Array) -> tuple[jax.Array, LossTerms]:
                terms = terms_of(t, b, k)
                return terms.numerator, terms

            if combiner is None:
                grads, terms = _accumulate(jax.grad(numerator, has_aux=True), train, batch, key,
                                           micro_batches, mesh, rules, constrain)
            else:
                task_grads, terms = _accumulate(
                    _per_task_grads(terms_of, objective.num_tasks), train, batch, key,
                    micro_batches, mesh, rules, lambda g: g, per_task=objective.num_tasks)
                # (b) the combiner sees every task's gradient.
                shared = [not is_task_specific(p) for p in _paths(state.params, train_idx)]
                grads = combiner.combine(task_grads, terms.task_weight > 0,
                                         jax.random.fold_in(key, NOISE_STREAM + 1), shared)

            # (c) normalise, update, and keep the old state if anything is not finite.
            scale = loss_scale(objective.normalization, terms.denominator)
            grads = constrain(
                [(g * scale).astype(p.dtype) for g, p in zip(grads, train, strict=True)]
            )
            full_grads: list[jax.Array] = [jnp.zeros_like(x) for x in leaves]
            for j, i in enumerate(train_idx):
                full_grads[i] = grads[j]
            loss, aux = objective.finalize(terms)
            updates, opt_state = optimizer.tx.update(
                treedef.unflatten(full_grads), state.opt_state, state.params
            )
            params = optax.apply_updates(state.params, updates)
            grad_norm = optax.global_norm(grads)
            # A non-finite loss, gradient or update (an infinite learning rate has finite
            # gradients) must not reach the state: keep params and optimizer state, still
            # advance the step (the batch was consumed, so resume stays exact).
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(updates)
            params = keep_unless(ok, params, state.params)
            opt_state = keep_unless(ok, opt_state, state.opt_state)
            rest = keep_unless(ok, _post_update(graphdef, params, state.rest), state.rest)
            metrics = {**aux, **selection}
            metrics["loss"] = loss
            metrics["grad_norm"] = grad_norm
            metrics["learning_rate"] = jnp.asarray(
                optimizer.learning_rate_fn(state.step), jnp.float32
            )
            metrics["skipped"] = jnp.logical_not(ok).astype(jnp.int32)
            new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                      rest=rest)
            return new_state, metrics

    def _select(state: TrainState, pool: Batch, key: jax.Array) -> tuple[Batch, Metrics]:
        model = merge_model(graphdef, state.params, state.rest)
        forward = getattr(objective, "base", objective)  # a wrapper (R3F) scores like its base
        if micro_batches == 1 or next(iter(pool.values())).shape[0] % micro_batches:
            chunks, n = jax.tree.map(lambda x: x[None], pool), 1
        else:
            chunks, n = _split_micro_batches(pool, micro_batches, mesh, rules), micro_batches

        def score(xs: tuple[jax.Array, Batch]) -> jax.Array:
            i, chunk = xs
            rngs = nnx.Rngs(dropout=jax.random.fold_in(key, i))
            out = forward.outputs(model, chunk, deterministic, rngs)
            return normalized_entropy(out["logits"], out["num_labels"])

        entropy = jax.lax.map(score, (jnp.arange(n), chunks))  # [n, rows / n]: rows i::n
        entropy = jax.lax.stop_gradient(entropy.swapaxes(0, 1).reshape(-1))
        index, metrics = sampler.select(entropy, pool)
        sharding = NamedSharding(mesh, PartitionSpec(part.batch_axes(mesh, rules)))
        picked = {k: jax.lax.with_sharding_constraint(jnp.take(x, index, axis=0), sharding)
                  for k, x in pool.items()}
        return picked, metrics

    jitted = jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, part.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )
    return CompiledStep(jitted, mesh, rules)


def _teacher_params(objective: Objective, state: TrainState) -> Any | None:
    """The momentum teacher's parameters (from the optimizer state) for an objective that reads
    them (SMART's proximal point, ``uses_teacher``); None otherwise. They are not differentiated
    (not among the trainable leaves), and the objective treats the teacher's outputs as
    constants."""
    if not getattr(objective, "uses_teacher", False):
        return None
    params = teacher_params(state.opt_state, state.params)
    if params is None:
        raise ValueError(
            f"{type(objective).__name__} has a proximal term (mu > 0) but the optimizer keeps no "
            "momentum teacher: build it with optimizers.make_optimizer(..., teacher_momentum=...) "
            "(TrainConfig.smart does this when 'mu' > 0)")
    return params


def _row_index(batch: Batch, mesh: Mesh, rules: part.Rules) -> jax.Array:
    rows = next(iter(batch.values())).shape[0]
    index = jnp.arange(rows, dtype=jnp.int32)
    return jax.lax.with_sharding_constraint(
        index, NamedSharding(mesh, PartitionSpec(part.batch_axes(mesh, rules))))


def _accumulate(
    grad_fn: Callable[..., tuple[list[jax.Array], LossTerms]],
    train: list[jax.Array],
    batch: Batch,
    key: jax.Array,
    micro_batches: int,
    mesh: Mesh,
    rules: part.Rules,
    constrain: Callable[[list[jax.Array]], list[jax.Array]],
    per_task: int = 0,
) -> tuple[list[jax.Array], LossTerms]:
    """Stage (a): summed float32 gradients (``[per_task, ...]`` per leaf when ``per_task``) and
    summed terms over the micro-batches."""
    if micro_batches == 1:
        grads, terms = grad_fn(train, batch, key)
        return [g.astype(jnp.float32) for g in grads], terms
    micro = _split_micro_batches(batch, micro_batches, mesh, rules)
    first = jax.tree.map(lambda x: x[0], micro)
    terms_shape = jax.eval_shape(lambda: grad_fn(train, first, key)[1])
    zeros_t = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), terms_shape)

    def body(carry: tuple[Any, LossTerms], xs: tuple[jax.Array, Batch]) -> Any:
        acc_g, acc_t = carry
        i, mb = xs
        g, t = grad_fn(train, mb, jax.random.fold_in(key, i))
        acc_g = [a + b.astype(jnp.float32) for a, b in zip(acc_g, g, strict=True)]
        acc_t = jax.tree.map(jnp.add, acc_t, t)
        return (constrain(acc_g), acc_t), None

    lead = (per_task,) if per_task else ()
    zeros = constrain([jnp.zeros((*lead, *p.shape), jnp.float32) for p in train])
    (grads, terms), _ = jax.lax.scan(
        body, (zeros, zeros_t), (jnp.arange(micro_batches), micro)
    )
    return grads, terms


def _per_task_grads(terms_of: Callable[..., LossTerms], num_tasks: int) -> Callable[..., Any]:
    """Gradient of each task's share of the loss numerator, ``[num_tasks, ...]`` per leaf: one
    forward pass, then one backward pass (a VJP reusing its residuals) per task present."""

    def fn(train: list[jax.Array], batch: Batch, key: jax.Array) -> Any:
        def task_numerators(t: list[jax.Array]) -> tuple[jax.Array, LossTerms]:
            terms = terms_of(t, batch, key)
            return terms.task_numerator, terms

        _, vjp, terms = jax.vjp(task_numerators, train, has_aux=True)
        present = terms.task_weight > 0

        def one(task: jax.Array) -> list[jax.Array]:
            cotangent = jax.nn.one_hot(task, num_tasks, dtype=jnp.float32)
            return jax.lax.cond(
                present[task],
                lambda: [g.astype(jnp.float32) for g in vjp(cotangent)[0]],
                lambda: [jnp.zeros(p.shape, jnp.float32) for p in train],
            )

        return jax.lax.map(one, jnp.arange(num_tasks)), terms

    return fn


def _post_update(graphdef: nnx.GraphDef, params: Any, rest: Any) -> Any:
    """The model's non-trainable state after its ``post_update`` hook (R4F's power iteration),
    run on the updated parameters; models without the hook keep ``rest`` as it is."""
    model = merge_model(graphdef, params, rest)
    if not hasattr(model, "post_update"):
        return rest
    model.post_update()
    return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])


def _paths(params: Any, idx: list[int]) -> list[str]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [jax.tree_util.keystr(flat[i][0]) for i in idx]


def all_finite(tree: Any) -> jax.Array:
    """True when every element of every leaf is finite (checked per element, so a huge but
    finite update does not count as non-finite through an overflowing norm)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def keep_unless(ok: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``ok`` else ``old``, leaf by leaf, inside the compiled step (no host sync)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def make_eval_step(
    graphdef: nnx.GraphDef,
    predict_fn: Callable[[nnx.Module, Batch], Any],
    mesh: Mesh,
    state_shardings: TrainState,
    batch_shardings: BatchShardings,
    *,
    rules: part.Rules = part.T5X_RULES,
) -> CompiledStep:
    """``eval_step(state, batch) -> predict_fn(model, batch)``, forward only (dropout off).

    ``predict_fn`` is usually ``objective.predict``; its outputs have the batch as dimension 0
    and keep the batch's sharding (use ``to_host`` to gather them on every process).
    """
    out_sharding = (
        batch_shardings
        if isinstance(batch_shardings, NamedSharding)
        else part.batch_sharding(mesh, rules)
    )

    def run(state: TrainState, batch: Batch) -> Any:
        with nnx.logical_axis_rules(rules):
            return predict_fn(merge_model(graphdef, state.params, state.rest), batch)

    jitted = jax.jit(
        run, in_shardings=(state_shardings, batch_shardings), out_shardings=out_sharding
    )
    return CompiledStep(jitted, mesh, rules)


def to_host(tree: Any) -> Any:
    """NumPy copies of global arrays on every process (all-gather across hosts when needed)."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: jax.device_get(x), tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
