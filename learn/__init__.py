"""Learning from logged events: data in one generic format, leave-one-out evaluation with full
ranking, and the trained session encoder (model, training, ONNX export).

Importing this package loads no model; torch, onnx and matplotlib are imported where used.
"""
from learn.data import (
           Interactions,
           UserSequence,
           load_amazon_beauty,
           load_generic,
           load_online_retail,
)
from learn.metrics import mrr_at, ndcg_at, recall_at, target_ranks
from learn.split import Fold, Split, leave_one_out

__all__ = ["Interactions", "UserSequence", "load_generic", "load_amazon_beauty", "load_online_retail",
           "leave_one_out", "Split", "Fold", "target_ranks", "recall_at", "ndcg_at", "mrr_at"]
