"""Choosing the intermediate task: rank source tasks for a target by their task embeddings.

An embedding folder (written by ``python -m mtl_jax.task_embed``) holds one ``<task>.npz`` per task
(component name -> vector) and ``embeddings.json`` (``{"method": "textemb"|"taskemb", "tasks":
{task: {...provenance...}}}``). For a target task every source task is ranked per component by
the cosine similarity of the two tasks' vectors; a method's rankings (all TaskEmb components; the
one TextEmb component) are fused by reciprocal rank fusion, ``RRF(s) = sum_c 1 / (k + r_c(s))``
with 1-based ranks and ``k = 60``; the methods' fused rankings are fused by RRF again (equal fused scores are ordered by the summed
method scores). Parameter
Fisher vectors (``param/...``) are one component together: their concatenation.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtl_jax.evaluation.tables import write_atomic

RRF_K = 60
MANIFEST = "embeddings.json"
PARAM_PREFIX = "param/"
PARAMS_COMPONENT = "params"
METHODS = ("taskemb", "textemb")


class EmbeddingError(ValueError):
    """An embedding folder or a ranking request that cannot work (the message says why)."""


@dataclasses.dataclass
class EmbeddingSet:
    """One folder's task embeddings: ``vectors[task][component]`` and the manifest."""

    method: str
    directory: Path
    vectors: dict[str, dict[str, np.ndarray]]
    manifest: dict[str, Any]

    @property
    def tasks(self) -> list[str]:
        return list(self.vectors)


def task_file(directory: Path, task: str) -> Path:
    return Path(directory) / f"{task}.npz"


def save_embedding(directory: str | Path, method: str, task: str,
                   components: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> Path:
    """Write ``<task>.npz`` and add the task to ``embeddings.json`` (a folder holds one method)."""
    if method not in METHODS:
        raise EmbeddingError(f"unknown embedding method {method!r}; expected one of {METHODS}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    manifest: dict[str, Any] = {"method": method, "tasks": {}}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("method") != method:
            raise EmbeddingError(f"{directory} holds {manifest.get('method')} embeddings; write "
                                 f"{method} embeddings to another folder")
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v, np.float32) for k, v in components.items()})
    path = write_atomic(task_file(directory, task), buffer.getvalue())
    manifest["tasks"][task] = {**dict(info), "components": sorted(components)}
    write_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def load_embeddings(directory: str | Path) -> EmbeddingSet:
    """Read a folder written by ``save_embedding``; a missing manifest or task file is an error
    naming it."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise EmbeddingError(f"{directory} is not a task-embedding folder: no {MANIFEST} (write "
                             "one with python -m mtl_jax.task_embed textemb|taskemb)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    method = manifest.get("method")
    if method not in METHODS:
        raise EmbeddingError(f"{manifest_path}: method {method!r} is not one of {METHODS}")
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for task in manifest.get("tasks", {}):
        path = task_file(directory, task)
        if not path.is_file():
            raise EmbeddingError(f"{manifest_path} lists task {task!r} but {path} is missing")
        with np.load(path) as data:
            vectors[task] = {k: np.asarray(data[k], np.float64) for k in data.files}
    if not vectors:
        raise EmbeddingError(f"{manifest_path} lists no task")
    return EmbeddingSet(method, directory, vectors, manifest)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened vectors (0 when either is all zeros)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """1-based ranks by descending score; ties keep the order of ``scores``."""
    order = sorted(scores, key=lambda s: -scores[s])
    return {s: i + 1 for i, s in enumerate(order)}


def reciprocal_rank_fusion(rankings: Sequence[Mapping[str, int]], k: int = RRF_K) -> dict[str, float]:
    """``RRF(s) = sum over rankings of 1 / (k + rank(s))`` (ranks 1-based); every ranking must
    rank the same items."""
    if not rankings:
        raise EmbeddingError("reciprocal rank fusion needs at least one ranking")
    items = set(rankings[0])
    for r in rankings[1:]:
        if set(r) != items:
            raise EmbeddingError(f"rankings rank different items: {sorted(items ^ set(r))}")
    return {s: sum(1.0 / (k + r[s]) for r in rankings) for s in rankings[0]}


def component_vectors(task_vectors: Mapping[str, np.ndarray],
                      pattern: str | None = None) -> dict[str, np.ndarray]:
    """The components a ranking compares: every non-parameter vector, plus ``params`` (all
    ``param/...`` vectors concatenated in name order); ``pattern`` (``re.search``) keeps some."""
    out = {k: v for k, v in task_vectors.items() if not k.startswith(PARAM_PREFIX)}
    params = sorted(k for k in task_vectors if k.startswith(PARAM_PREFIX))
    if params:
        out[PARAMS_COMPONENT] = np.concatenate([np.ravel(task_vectors[k]) for k in params])
    if pattern is not None:
        regex = re.compile(pattern)
        out = {k: v for k, v in out.items() if regex.search(k)}
    return out


@dataclasses.dataclass
class Ranking:
    """Source tasks for one target, best first, with every score that led there."""

    target: str
    sources: list[str]  # by fused rank
    fused: dict[str, float]  # RRF over the methods' rankings (a single method: its own scores)
    method_scores: dict[str, dict[str, float]]  # method -> source -> its RRF over components
    cosines: dict[str, dict[str, dict[str, float]]]  # method -> component -> source -> cosine

    @property
    def best(self) -> str:
        return self.sources[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "rrf_k": RRF_K,
            "sources": [
                {"rank": i + 1, "source": s, "score": self.fused[s],
                 "methods": {m: scores[s] for m, scores in self.method_scores.items()}}
                for i, s in enumerate(self.sources)
            ],
            "cosines": self.cosines,
        }


def rank_sources(target: str, sets: Sequence[EmbeddingSet], sources: Sequence[str] | None = None,
                 components: str | None = None, include_target: bool = False) -> Ranking:
    """Rank every source task (by default every other task present in all ``sets``) for
    ``target``. Within a set, per component, sources are ranked by cosine similarity to the
    target and the component rankings fused by RRF; the sets' rankings are then fused by RRF.
    ``components``: a regex selecting the components compared."""
    if not sets:
        raise EmbeddingError("no embedding folder given")
    for s in sets:
        if target not in s.vectors:
            raise EmbeddingError(f"target task {target!r} has no embedding in {s.directory} "
                                 f"(it has {', '.join(s.tasks)})")
    common = [t for t in sets[0].tasks if all(t in s.vectors for s in sets[1:])]
    if sources is None:
        chosen = [t for t in common if include_target or t != target]
    else:
        chosen = list(sources)
        for t in chosen:
            missing = [str(s.directory) for s in sets if t not in s.vectors]
            if missing:
                raise EmbeddingError(f"source task {t!r} has no embedding in {', '.join(missing)}")
    if not chosen:
        raise EmbeddingError(f"no source task to rank for {target!r}: the folders share no "
                             "other task")
    method_scores: dict[str, dict[str, float]] = {}
    cosines: dict[str, dict[str, dict[str, float]]] = {}
    for s in sets:
        label = s.method if s.method not in method_scores else f"{s.method}:{s.directory}"
        target_vecs = component_vectors(s.vectors[target], components)
        if not target_vecs:
            raise EmbeddingError(f"{s.directory}: no component of {target!r} matches "
                                 f"{components!r}")
        source_vecs = {src: component_vectors(s.vectors[src], components) for src in chosen}
        per_component: dict[str, dict[str, float]] = {}
        for name, vec in target_vecs.items():
            row = {}
            for src in chosen:
                other = source_vecs[src].get(name)
                if other is None or np.shape(other) != np.shape(vec):
                    raise EmbeddingError(
                        f"{s.directory}: component {name!r} of {src!r} "
                        f"{'is missing' if other is None else f'has shape {np.shape(other)}'}; "
                        f"the target's has shape {np.shape(vec)} (embeddings from different "
                        "models cannot be compared)")
                row[src] = cosine(vec, other)
            per_component[name] = row
        cosines[label] = per_component
        method_scores[label] = reciprocal_rank_fusion([ranks(r) for r in per_component.values()])
    if len(method_scores) == 1:
        fused = next(iter(method_scores.values()))
    else:
        fused = reciprocal_rank_fusion([ranks(v) for v in method_scores.values()])
    # Equal fused scores (two methods that swap two sources) are ordered by the summed method
    # scores, then by name.
    order = sorted(chosen, key=lambda t: (-fused[t], -sum(m[t] for m in method_scores.values()), t))
    return Ranking(target, order, fused, method_scores, cosines)


def ranking_table(ranking: Ranking) -> str:
    """A markdown table: rank, source, fused score and each method's RRF score (rank)."""
    methods = list(ranking.method_scores)
    method_ranks = {m: ranks(v) for m, v in ranking.method_scores.items()}
    head = ["rank", "source", "fused RRF"] + [f"{m} RRF (rank)" for m in methods]
    lines = [f"target: {ranking.target}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---:", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for i, s in enumerate(ranking.sources):
        cells = [str(i + 1), s, f"{ranking.fused[s]:.5f}"]
        cells += [f"{ranking.method_scores[m][s]:.5f} ({method_ranks[m][s]})" for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_rankings(rankings: Sequence[Ranking], directory: str | Path,
                  name: str = "ranking") -> dict[str, Path]:
    """``<name>.md`` (one table per target), ``<name>.json`` and ``<name>.png`` (arrows from each
    target's best source)."""
    from mtl_jax.evaluation.plots import plot_best_sources

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md = "\n\n".join(ranking_table(r) for r in rankings) + "\n"
    paths = {
        "md": write_atomic(directory / f"{name}.md", md),
        "json": write_atomic(directory / f"{name}.json",
                             json.dumps([r.to_json() for r in rankings], indent=2) + "\n"),
    }
    tasks = list(dict.fromkeys(t for r in rankings for t in (r.target, *r.sources)))
    paths["png"] = plot_best_sources({r.target: r.best for r in rankings}, directory / f"{name}.png",
                                     tasks=tasks)
    return paths
