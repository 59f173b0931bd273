r"""Hummingbird: segmentation by soft label transfer from a memory bank of training patches.

The protocol of Balazevic et al. 2023 ("Towards in-context scene understanding"), training-free:

- memory bank: ``memory_size`` patch features in total from the training rows, an equal share
  ``q = max(1, memory_size // rows)`` per row drawn uniformly without replacement among the row's
  labelled patches (seeded; a row with fewer labelled patches gives all of them), each kept with its
  majority label ``y_j``. Several augmented views of an image enter as several rows (each with its
  own mask), so the bank holds ``views x images x q`` patches;
- similarity: cosine, ``s_j = <x / ‖x‖, m_j / ‖m_j‖>``;
- neighbours: the ``k = 30`` most similar bank entries ``N(x)``;
- soft label transfer: ``p(x) = Σ_{j ∈ N(x)} softmax_j(s_j / T) · onehot(y_j)`` with ``T = 0.02``;
- prediction: ``p`` of every patch resized bilinearly to the pixel grid, then the argmax per pixel
  (ties to the lowest class).

The search and the weighted vote are the classification k-NN's (``knn_search``, ``knn_vote`` with
softmax weights); only the bank sampling and the pixel-level argmax are this module's. No
hyperparameter is selected: k, T and the memory size are stated, as in the paper's protocol.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError
from epcache.probe.dense.inputs import DenseData, DenseResult, as_tensor, score_patch_scores
from epcache.probe.solvers import knn_search, knn_vote

__all__ = ["HUMMINGBIRD_K", "HUMMINGBIRD_MEMORY", "HUMMINGBIRD_TEMPERATURE", "hummingbird_memory",
           "hummingbird_scores", "run_hummingbird"]

HUMMINGBIRD_K = 30
HUMMINGBIRD_TEMPERATURE = 0.02
HUMMINGBIRD_MEMORY = 1_024_000  # patches in the bank: every labelled patch of a small dataset


def hummingbird_memory(feats: np.ndarray, patch_labels: np.ndarray, *, memory_size: int, ignore_index: int,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bank features ``[M, D]`` and int64 labels ``[M]``: ``memory_size // rows`` labelled patches per row.

    Raises:
        ConfigError: memory_size < 1, or no labelled training patch.
    """
    if memory_size < 1:
        raise ConfigError(f"hummingbird memory size must be >= 1 patch, got {memory_size}")
    n = feats.shape[0]
    flat_lab = patch_labels.reshape(n, -1)
    per_row = max(1, memory_size // n)
    keys = np.random.default_rng(seed).random(flat_lab.shape)
    keys[flat_lab == ignore_index] = np.inf  # unlabelled patches sort last and are dropped below
    take = np.argsort(keys, axis=1, kind="stable")[:, :per_row]
    rows = np.broadcast_to(np.arange(n)[:, None], take.shape)
    keep = np.isfinite(keys[rows, take])
    rows, take = rows[keep], take[keep]
    if not rows.size:
        raise ConfigError("hummingbird: the training rows hold no labelled patch")
    return feats.reshape(n, -1, feats.shape[-1])[rows, take], flat_lab[rows, take].astype(np.int64)


def hummingbird_scores(bank: Tensor, bank_labels: Tensor, queries: Tensor, *, num_classes: int,
                       k: int = HUMMINGBIRD_K, temperature: float = HUMMINGBIRD_TEMPERATURE) -> Tensor:
    """``[q, C]`` transferred label distribution of every query (rows sum to 1)."""
    if not temperature > 0:
        raise ConfigError(f"hummingbird temperature must be > 0, got {temperature}")
    bank = torch.nn.functional.normalize(bank, dim=1)
    queries = torch.nn.functional.normalize(queries, dim=1)
    sims, idx = knn_search(bank, queries, k, metric="cosine")
    (scores,) = knn_vote(sims, bank_labels[idx], ks=[k], temperature=temperature, num_classes=num_classes,
                         weighting="softmax")
    return scores


def run_hummingbird(
    data: DenseData,
    *,
    memory_size: int = HUMMINGBIRD_MEMORY,
    k: int = HUMMINGBIRD_K,
    temperature: float = HUMMINGBIRD_TEMPERATURE,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> DenseResult:
    """Bank from all training rows, label transfer to every evaluation patch, scored on the pixels."""
    bank, labels = hummingbird_memory(data.train_feats, data.train_patch_labels, memory_size=memory_size,
                                      ignore_index=data.ignore_index, seed=seed)
    m, h, w, D = data.eval_feats.shape
    scores = hummingbird_scores(as_tensor(bank, dtype), torch.from_numpy(labels),
                                as_tensor(data.eval_feats.reshape(-1, D), dtype), num_classes=data.num_classes, k=k,
                                temperature=temperature)
    scores = scores.reshape(m, h, w, -1).permute(0, 3, 1, 2)
    metrics, preview = score_patch_scores(scores, data.eval_labels, num_classes=data.num_classes,
                                          ignore_index=data.ignore_index)
    chosen: dict[str, object] = {"memory_size": memory_size, "bank": int(bank.shape[0]), "k": k,
                                 "temperature": temperature}
    return DenseResult("hummingbird", metrics, chosen, [], preview)
