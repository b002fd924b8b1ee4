"""The history encoder's Mamba block (SPEC 4): pre-norm residual around a selective state-space mixer.

Mixer, for x [B, L, d_model]:
    (u, z) = in_proj(x)                              u, z: [B, d_inner, L], time-major views of [B, L, d_inner]
    u = silu(causal depthwise conv(u))               width d_conv, retailsim.ops.causal_conv1d
    (δ_low, B, C) = x_proj(u)                        input-dependent Δ (rank dt_rank), B and C [B, N, L]
    Δ = softplus(dt_proj(δ_low) + dt_bias)           (the softplus and bias run inside the scan)
    y = selective_scan(u, Δ, A = -exp(A_log), B, C, D, z)   h_t = exp(Δ A) h + Δ B u,  y = C h + D u, · silu(z)
    out = out_proj(y)
Only the public ops ``selective_scan`` and ``causal_conv1d`` are called; the backend they run on is theirs to
choose (retailsim.ops.backend). Both are causal, so outputs at real positions of a left-aligned, right-padded
history never see the padding. Every [B, d_inner, L] tensor here is a transposed view of a [B, L, d_inner]
matmul output: the C++ kernels read such views in place and return their results in the same time-major
layout, so on CPU no transpose is copied between the projections, the conv and the scan. u and z come from
two matmuls on the halves of in_proj's weight, so their gradients need no concatenation either.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from retailsim.model.config import WorldModelConfig
from retailsim.ops import causal_conv1d, selective_scan

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4  # initial step sizes Δ, log-uniform in [DT_MIN, DT_MAX]


class MambaMixer(nn.Module):
    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        d_model, d_inner, n, rank = config.d_model, config.d_inner, config.d_state, config.dt_rank
        self.d_inner, self.d_state, self.dt_rank = d_inner, n, rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(d_inner, config.d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(d_inner))
        self.x_proj = nn.Linear(d_inner, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(d_inner))
        # S4D-real initialisation: A[d, n] = -(n + 1), stored as its log so A stays negative.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of the conv and the step size: Δ = softplus(dt_bias) spread over [DT_MIN, DT_MAX]."""
        nn.init.uniform_(self.conv_weight, -1 / math.sqrt(self.conv_weight.shape[1]),
                         1 / math.sqrt(self.conv_weight.shape[1]))
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        with torch.no_grad():
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
            dt = dt.clamp(min=DT_FLOOR)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))        # inverse of softplus
            self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
            self.D.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, d_inner = x.shape[1], self.d_inner
        u = F.linear(x, self.in_proj.weight[:d_inner]).transpose(1, 2)    # [B, d_inner, L]
        z = F.linear(x, self.in_proj.weight[d_inner:]).transpose(1, 2)    # [B, d_inner, L]
        u = causal_conv1d(u, self.conv_weight, self.conv_bias, activation="silu")  # [B, d_inner, L]
        projected = self.x_proj(u.transpose(1, 2))                        # [B, L, rank + 2N]
        dt_low, B, C = projected.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj(dt_low).transpose(1, 2)                      # [B, d_inner, L]
        B = B.transpose(1, 2)                                             # [B, N, L], a view contiguous along N
        C = C.transpose(1, 2)                                             # (every scan path reads it strided)
        A = -torch.exp(self.A_log.float())                                # [d_inner, N]
        y = selective_scan(u, delta, A, B, C, D=self.D.float(), z=z, delta_bias=self.dt_bias.float(),
                           delta_softplus=True)                           # [B, d_inner, L]
        assert y.shape[-1] == length
        return self.out_proj(y.transpose(1, 2))                           # [B, L, d_model]


class MambaBlock(nn.Module):
    """x + mixer(LayerNorm(x)): one pre-norm residual Mamba layer, [B, L, d_model] → [B, L, d_model]."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.mixer = MambaMixer(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))
