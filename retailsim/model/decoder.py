"""The basket decoder (SPEC 4): pre-norm Transformer layers over [context token; basket tokens].

Self-attention is bidirectional with a key padding mask and there is no positional encoding over the basket
slots: a basket is a set (Stage 1 orders its slots by product id), so permuting the slots permutes the outputs.
Cross-attention reads the encoded history under its padding mask; the caller prepends a learned "no history"
memory slot that is always present, so anonymous and new customers attend to something (never to nothing,
which would be a softmax over an empty set).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from retailsim.model.config import WorldModelConfig


class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention; ``key_valid`` [B, Lk] bool (True = attend)."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads, self.dropout = config.n_heads, config.dropout
        self.query = nn.Linear(d, d)
        self.key_value = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        b, lq, d = x.shape
        heads = lambda t: t.view(b, t.shape[1], self.n_heads, d // self.n_heads).transpose(1, 2)  # noqa: E731
        q = heads(self.query(x))                                          # [B, h, Lq, d/h]
        k, v = (heads(t) for t in self.key_value(memory).chunk(2, dim=-1))  # [B, h, Lk, d/h]
        mask = key_valid[:, None, None, :]                                # [B, 1, 1, Lk]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # [B, h, Lq, d/h]
        return self.out(y.transpose(1, 2).reshape(b, lq, d))


class DecoderLayer(nn.Module):
    """x += self-attn(LN x); x += cross-attn(LN x, history); x += FFN(LN x)."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_norm, self.cross_norm, self.ffn_norm = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attention = Attention(config)
        self.cross_attention = Attention(config)
        self.ffn = nn.Sequential(nn.Linear(d, config.d_ffn), nn.GELU(), nn.Linear(config.d_ffn, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, tokens: torch.Tensor, token_valid: torch.Tensor, memory: torch.Tensor,
                memory_valid: torch.Tensor) -> torch.Tensor:
        normed = self.self_norm(tokens)
        tokens = tokens + self.drop(self.self_attention(normed, normed, token_valid))
        tokens = tokens + self.drop(self.cross_attention(self.cross_norm(tokens), memory, memory_valid))
        return tokens + self.drop(self.ffn(self.ffn_norm(tokens)))
