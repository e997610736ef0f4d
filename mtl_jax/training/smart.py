"""SMART adversarial smoothness regularisation (Jiang et al. 2020), as MT-DNN runs it.

``loss = L(f(x)) + alpha * KL_sym(f(x) || f(x~))`` where ``x`` is the embeddings' output and
``x~ = x + delta``: ``delta`` starts as Gaussian noise, takes ``steps`` ascent steps on the
symmetric KL between the clean and the perturbed predictions, and is normalised per token by its
L-infinity norm. See docs/methods.md ("SMART") for where this follows MT-DNN and where not.

The Bregman proximal point part (the paper's Algorithm 1, which MT-DNN's code leaves out) is
the option ``mu > 0``: ``+ mu * KL_sym(f(x; theta) || f(x; theta~))`` with ``theta~`` a momentum
teacher, the exponential moving average of the parameters (``training/teacher.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtl_jax import features as F
from mtl_jax.training.objectives import Batch, LossTerms, WrappedObjective, row_noise
from mtl_jax.training.teacher import Momentum, momentum_schedule

NORMALIZE = ("perturbation", "gradient")
# MT-DNN's guard in ``x / (max|x| + eps)``.
_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class SMARTObjective(WrappedObjective):
    """Wraps a family objective with SMART's adversarial term (logged as ``smart_kl``).

    - ``sigma``: standard deviation of the initial noise (MT-DNN's ``noise_var`` = 1e-5, which
      its code uses as a standard deviation);
    - ``steps`` (K), ``step_size`` (eta): the ascent on ``KL_sym(sg(f(x)) || f(x + delta))``
      with respect to ``delta`` only (parameters held constant);
    - ``normalize="perturbation"`` (MT-DNN's code): ``delta <- d / (max_h |d| + 1e-6)`` with
      ``d = delta + eta * grad``, i.e. unit L-infinity norm per token; ``"gradient"`` (the
      paper's Algorithm 1): ``delta <- clip(delta + eta * grad / max_h |grad|, -radius, radius)``;
    - ``alpha``: weight of the final term ``KL(sg(p)||q) + KL(sg(q)||p)`` (float32 log-softmax of
      both sides, each KL's target detached), which trains through both passes; ``alpha=0``
      skips the adversarial passes altogether;
    - ``mu`` (0 = off): weight of the proximal term ``KL_sym(f(x; theta) || f(x; theta~))``
      (logged as ``smart_prox``), the teacher's predictions a constant computed without dropout,
      the gradient reaching the parameters through both KL directions; ``theta~`` follows
      ``theta~ <- beta * theta~ + (1 - beta) * theta`` after every update, ``beta`` for the
      first ``beta_switch`` fraction of the run's updates and ``beta_late`` after (the paper's
      0.99 / 0.999 / 10 %).

    Noise and the term are masked: padding tokens get no perturbation, padding examples (and
    regression heads, as in R3F) contribute nothing; the noise of batch row r comes from
    ``fold_in(noise_key, r)`` so micro-batches equal the whole batch.
    """

    sigma: float = 1e-5
    step_size: float = 1e-3
    steps: int = 1
    alpha: float = 1.0
    normalize: str = "perturbation"
    radius: float = 1e-5
    mu: float = 0.0
    beta: float = 0.99
    beta_late: float = 0.999
    beta_switch: float = 0.1

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE:
            raise ValueError(f"SMART normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        if min(self.sigma, self.step_size, self.alpha, self.radius) < 0 or self.steps < 0:
            raise ValueError(
                f"SMART sigma, step_size, alpha, radius and steps must be >= 0, got {self.sigma}, "
                f"{self.step_size}, {self.alpha}, {self.radius}, {self.steps}")
        if self.mu < 0:
            raise ValueError(f"SMART mu (the proximal term's weight) must be >= 0, got {self.mu}")
        momentum_schedule(self.beta, self.beta_late, self.beta_switch, None)  # validates

    @property
    def uses_teacher(self) -> bool:
        """The train step passes ``teacher=`` (the momentum teacher's model) to ``terms``."""
        return self.mu > 0

    def teacher_momentum(self, total_steps: int | None) -> Momentum | None:
        """The momentum schedule the optimizer's teacher follows; None without the proximal term."""
        if not self.uses_teacher:
            return None
        return momentum_schedule(self.beta, self.beta_late, self.beta_switch, total_steps)

    def initial_noise(self, model: nnx.Module, batch: Batch, key: jax.Array) -> jax.Array:
        """``N(0, sigma^2)`` per row (``F.ROW_INDEX``), zero at padding tokens."""
        shape = self.base.embedding_shape(model, batch)
        rows = batch.get(F.ROW_INDEX, jnp.arange(shape[0]))
        return row_noise(key, rows, shape, self.sigma, "normal") * self._mask(batch)

    def _mask(self, batch: Batch) -> jax.Array:
        return self.base.embedding_mask(batch)[..., None]

    def adversarial_kl(
        self, model: nnx.Module, batch: Batch, target: Any, delta: jax.Array,
        deterministic: bool, rngs: nnx.Rngs | None,
    ) -> jax.Array:
        """Summed weighted ``KL_sym(target || f(x + delta))``: what the ascent climbs."""
        out = self.base.outputs(model, batch, deterministic, rngs, embedding_output_noise=delta)
        values, _ = self.base.divergence(target, out, batch)
        return jnp.sum(values)

    def update(self, delta: jax.Array, grad: jax.Array) -> jax.Array:
        """One ascent step of the perturbation, normalised (see ``normalize``)."""
        def inf_norm(x: jax.Array) -> jax.Array:
            return jnp.max(jnp.abs(x), axis=-1, keepdims=True) + _NORM_EPS

        if self.normalize == "perturbation":
            moved = delta + self.step_size * grad
            return moved / inf_norm(moved)
        moved = delta + self.step_size * grad / inf_norm(grad)
        return jnp.clip(moved, -self.radius, self.radius)

    def ascend(
        self, model: nnx.Module, batch: Batch, clean: Any, delta: jax.Array,
        deterministic: bool, rngs: nnx.Rngs | None,
    ) -> jax.Array:
        """``steps`` ascent steps from ``delta``; the result is a constant for the outer gradient.

        The model is re-merged from stopped parameters inside the inner ``jax.grad``, so only the
        perturbation is differentiated and no second-order term reaches the parameters. Each
        pass draws its own dropout key (as MT-DNN's separate forward passes do)."""
        if self.steps == 0:
            return delta
        graphdef, state = nnx.split(model)
        state = jax.tree.map(jax.lax.stop_gradient, state)
        target = jax.tree.map(jax.lax.stop_gradient, clean)
        mask = self._mask(batch)
        stream = None if deterministic or rngs is None else getattr(rngs, "dropout", None)
        for _ in range(self.steps):
            key = None if stream is None else stream()

            def kl(d: jax.Array, key: jax.Array | None = key) -> jax.Array:
                inner = None if key is None else nnx.Rngs(dropout=key)
                return self.adversarial_kl(nnx.merge(graphdef, state), batch, target, d,
                                           deterministic, inner)

            delta = jax.lax.stop_gradient(self.update(delta, jax.grad(kl)(delta))) * mask
        return delta

    def terms(
        self, model: nnx.Module, batch: Batch, *, deterministic: bool, rngs: nnx.Rngs | None,
        teacher: nnx.Module | None = None,
    ) -> LossTerms:
        clean = self.base.outputs(model, batch, deterministic, rngs)
        terms = self.base.terms_from(clean, batch)
        if self.alpha > 0:
            delta = self.initial_noise(model, batch, self.noise_key(rngs))
            delta = self.ascend(model, batch, clean, delta, deterministic, rngs)
            adv = self.base.outputs(model, batch, deterministic, rngs,
                                    embedding_output_noise=delta)
            values, task_ids = self.base.divergence(clean, adv, batch, detach_targets=True)
            terms = self.add_divergence(terms, values, task_ids, self.alpha, "smart_kl")
        if self.uses_teacher:
            terms = self.add_divergence(terms, *self.proximal(clean, batch, teacher), self.mu,
                                        "smart_prox")
        return terms

    def proximal(self, clean: Any, batch: Batch, teacher: nnx.Module | None
                 ) -> tuple[jax.Array, jax.Array]:
        """Per-element ``KL_sym(f(x; theta) || f(x; theta~))`` and task ids; the teacher's side
        is a constant (no dropout: the target is the averaged function, not a sample of it)."""
        if teacher is None:
            raise ValueError("SMART mu > 0 needs the momentum teacher's model (teacher=...): the "
                             "train step passes it when the optimizer keeps one")
        target = jax.tree.map(jax.lax.stop_gradient, self.base.outputs(teacher, batch, True, None))
        return self.base.divergence(clean, target, batch)
