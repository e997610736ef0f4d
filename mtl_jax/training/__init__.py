"""Mesh and sharding rules, optax chains, losses, train state, step, loop and checkpoints."""
