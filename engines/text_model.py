"""The PyTorch reference text encoder: BERT, masked mean pooling and L2 normalisation in one module.

Keeping pooling and normalisation inside ``forward`` means an ONNX export or TensorRT engine built
from this module returns finished embeddings, not token states.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PooledEncoder(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        pooled = summed / counts
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def load_pooled_encoder(model_dir: str | Path, dtype: torch.dtype = torch.float32,
                        attention: str = "eager") -> PooledEncoder:
    """Load the transformers BERT model from a local folder (never from a hub).

    ``attention`` is transformers' ``attn_implementation``: "eager" exports cleanly to ONNX and is
    the CPU reference; "sdpa" uses PyTorch's fused attention kernels on the GPU.
    """
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype,
                                     attn_implementation=attention)
    model = PooledEncoder(bert)
    model.eval()
    return model
