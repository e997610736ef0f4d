"""mtl_jax: multitask learning of multilingual NLP classifiers in JAX/Flax.

Layering: only ``mtl_jax.data`` imports TensorFlow/seqio; ``models``, ``training`` and
``evaluation`` consume batches of NumPy arrays named in ``mtl_jax.features``. Imports point down
the house only: ``models`` never imports ``training``, ``training`` never imports ``evaluation``,
and none of the three imports ``data``; ``experiment`` joins the layers and the CLIs (``train``,
``evaluate``, ``predict``, ``inspect``, ``convert``) never import each other.
"""

__version__ = "0.1.0"
