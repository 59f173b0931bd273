"""What every head of a store is built from: its width, classes and token layout.

Split from ``trainer.py`` because the geometry is a property of the store, not of training:
``probe/run.py`` builds it from a store's metadata, the trainer builds its heads from it, and
the saved ``head_config`` (which rebuilds a head with ``create_head`` after training) comes from
it alone, so none of them needs the training loop to know a head's shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from epcache.probe.config.runspec import RunSpec
from epcache.probe.data.sources import HeadInput, head_input

__all__ = ["HeadGeometry"]


@dataclass(frozen=True)
class HeadGeometry:
    """What every head of a store needs to be built: width, classes and token layout."""

    dim: int
    num_classes: int
    num_tokens: int  # T, prefix included
    num_patches: int
    num_prefix: int
    cls_index: int | None = 0  # position of CLS among the prefix tokens; None: no CLS
    num_registers: int = 0
    pooled_dim: int | None = None  # width of the store's pooled output; None: the store has none

    def shapes(self, run: RunSpec) -> HeadInput:
        """Width, token count and prefix of the input ``run``'s head reads (token source x layer mix)."""
        return head_input(run.head.kind, run.tokens, run.layer_mix, len(run.mix_layers), dim=self.dim,
                          num_prefix=self.num_prefix, cls_index=self.cls_index, num_registers=self.num_registers,
                          num_patches=self.num_patches, pooled_dim=self.pooled_dim)

    def tokens_seen(self, run: RunSpec) -> int:
        """N of the token sequence a head is built for (``clip`` learns a table of that length)."""
        if run.head.kind == "linear":
            return self.num_tokens
        return self.shapes(run).num_tokens

    def head_config(self, run: RunSpec) -> dict[str, Any]:
        """Keyword arguments that rebuild the head with ``create_head`` (``vector_input``: a ready vector)."""
        shapes = self.shapes(run)
        plain_linear = run.head.kind == "linear" and run.layer_mix == "none" and run.tokens != "pooled"
        config = {
            "kind": run.head.kind,
            "options": dict(run.head.params),
            "in_dim": self.dim if plain_linear else shapes.in_dim,
            "num_classes": self.num_classes,
            "num_tokens": self.tokens_seen(run),
            "num_prefix": self.num_prefix if run.head.kind == "linear" else shapes.num_prefix,
            "input": {"tokens": run.tokens, "layer_mix": run.layer_mix, "layers": list(run.group_key)},
        }
        if run.head.kind == "linear" and not plain_linear:
            config["vector_input"] = shapes.in_dim  # the saved head is VectorInput -> BN -> Linear
        return config
