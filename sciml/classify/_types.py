"""jaxtyping aliases for the classifier stage."""

from __future__ import annotations

from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

# One sample: an image (channels, height, width) or a flat feature vector (features,).
Sample = Float[Array, "*shape"]
Batch = Float[Array, "batch *shape"]
Logits = Float[Array, " classes"]
BatchLogits = Float[Array, "batch classes"]
Labels = Int[Array, " batch"]
Mask = Bool[Array, " batch"]
Steps = Int[Array, ""]
Time = Float[Array, ""]
Key = PRNGKeyArray

__all__ = [
    "Batch",
    "BatchLogits",
    "Key",
    "Labels",
    "Logits",
    "Mask",
    "Sample",
    "Steps",
    "Time",
]
