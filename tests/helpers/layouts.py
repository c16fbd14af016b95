"""Parameter trees in the layout checkpoints had before the decoder layers were stacked."""
from __future__ import annotations

from typing import Any

import jax


def per_layer(tree: Any, num_layers: int) -> Any:
    """A nested dict with each "layers" subtree of stacked arrays turned into layers/<i>/...
    holding slice i of each (the layout of checkpoints written before the layers were stacked)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key == "layers":
            out[key] = {str(i): jax.tree.map(lambda x, i=i: x[i], value) for i in range(num_layers)}
        else:
            out[key] = per_layer(value, num_layers)
    return out
