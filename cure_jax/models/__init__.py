"""Model families of the learner (Flax NNX)."""
