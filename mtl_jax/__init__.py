"""mtl_jax: multitask learning of multilingual NLP classifiers in JAX/Flax.

Layering (see DESIGN.md): only ``mtl_jax.data`` imports TensorFlow/seqio; ``models``,
``training`` and ``evaluation`` consume batches of NumPy arrays named in ``mtl_jax.features``.
"""

__version__ = "0.1.0"
