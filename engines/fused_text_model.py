"""The text encoder written for CUDA graphs: the same function as
:class:`engines.text_model.PooledEncoder`, from the same weights, with

- query, key and value projections fused into one matrix product per layer,
- ``scaled_dot_product_attention`` (fused attention kernels on the GPU),
- no data-dependent Python branches and no host tensors made inside ``forward``, so a whole call
  can be captured once into a CUDA graph and replayed.

transformers' own BERT builds its attention mask with Python-side checks that cannot be captured;
this module is small enough to check against it on the CPU (``tests/engines``) in fp32.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _Layer(nn.Module):
    def __init__(self, hf_layer, heads: int, eps: float) -> None:
        super().__init__()
        att = hf_layer.attention
        self.heads = heads
        self.eps = eps
        q, k, v = att.self.query, att.self.key, att.self.value
        self.qkv = nn.Linear(q.in_features, 3 * q.out_features)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            self.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        self.attn_out = att.output.dense
        self.attn_norm = att.output.LayerNorm
        self.up = hf_layer.intermediate.dense
        self.down = hf_layer.output.dense
        self.out_norm = hf_layer.output.LayerNorm

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        att = att.transpose(1, 2).reshape(b, n, d)
        x = F.layer_norm(self.attn_out(att) + x, (d,), self.attn_norm.weight, self.attn_norm.bias, self.eps)
        h = self.down(F.gelu(self.up(x)))
        return F.layer_norm(h + x, (d,), self.out_norm.weight, self.out_norm.bias, self.eps)


class FusedPooledEncoder(nn.Module):
    """BERT encoder, masked mean pooling and L2 normalisation, for fixed-shape replay."""

    def __init__(self, bert) -> None:
        super().__init__()
        cfg = bert.config
        if getattr(cfg, "hidden_act", "gelu") != "gelu":
            raise ValueError(f"FusedPooledEncoder implements gelu, the model uses {cfg.hidden_act}")
        emb = bert.embeddings
        self.word = emb.word_embeddings
        self.position = emb.position_embeddings
        self.token_type = emb.token_type_embeddings
        self.emb_norm = emb.LayerNorm
        self.eps = cfg.layer_norm_eps
        self.layers = nn.ModuleList(_Layer(layer, cfg.num_attention_heads, cfg.layer_norm_eps)
                                    for layer in bert.encoder.layer)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        x = self.word(input_ids) + self.position.weight[:n] + self.token_type.weight[0]
        d = x.shape[-1]
        x = F.layer_norm(x, (d,), self.emb_norm.weight, self.emb_norm.bias, self.eps)
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        w = mask.unsqueeze(-1)
        pooled = (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled.float(), p=2.0, dim=1)


def load_fused_encoder(model_dir, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> FusedPooledEncoder:
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype,
                                     attn_implementation="eager")
    model = FusedPooledEncoder(bert).to(device=device, dtype=dtype)
    model.eval()
    return model
