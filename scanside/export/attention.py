"""Attention exported as ONNX Runtime's fused ``com.microsoft.MultiHeadAttention``.

Traced as it is, each diffusers attention becomes MatMul -> Mul -> Softmax -> MatMul over the
whole (heads, queries, keys) score tensor: at 512 px SD 1.5's first self-attention holds
8 x 4096 x 4096 float32 scores, 512 MB, twice with the softmax. ONNX Runtime's fused kernel
never materialises them (on the CPU it runs MLAS's tiled flash attention). Measured alone, on
one SD 1.5 self-attention (4,096 tokens, 320 channels, 8 heads) on a 2-core AMD EPYC: 153 ms and
115 MB peak against 291 ms and 1,180 MB unfused; at 9,216 tokens (768 px) 834 ms and 168 MB
against 1,191 ms and 2,873 MB; outputs equal to 3e-7.

The fused node is ONNX Runtime's own (CPU and CUDA providers), so an engine exported with it
runs on ONNX Runtime only: TensorRT's parser does not know the op (it fuses the plain pattern
itself), and scanside refuses such an engine there with the fix. The export swaps diffusers'
attention processor for one whose core is a ``torch.autograd.Function`` with an ONNX
``symbolic``: torch computes the same attention while tracing, the graph gets the fused node.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

DOMAIN = "com.microsoft"


class FusedAttentionOp(torch.autograd.Function):
    """softmax(q k^T * scale) v over ``heads`` heads, (B, S, H*D) in and out."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                heads: int, scale: float) -> torch.Tensor:
        b = query.shape[0]
        split = [t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)
                 for t in (query, key, value)]
        out = F.scaled_dot_product_attention(*split, scale=scale)
        return out.transpose(1, 2).reshape(b, -1, value.shape[-1])

    @staticmethod
    def symbolic(g: Any, query: Any, key: Any, value: Any, heads: int, scale: float) -> Any:
        out = g.op(f"{DOMAIN}::MultiHeadAttention", query, key, value, num_heads_i=heads,
                   scale_f=scale)
        out.setType(query.type())  # (B, S, H*D): the processor only fuses where D_v == D_q
        return out


class FusedAttnProcessor:
    """diffusers' AttnProcessor2_0 with its scaled-dot-product core as one fused node; any
    attention it cannot express (a mask, per-head norms, unequal query and value widths) runs
    diffusers' own processor unchanged."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.fallback = AttnProcessor2_0()

    def fusable(self, attn: Any, attention_mask: Optional[torch.Tensor]) -> bool:
        return (attention_mask is None and attn.norm_q is None and attn.norm_k is None
                and attn.to_q.out_features == attn.to_v.out_features)

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None,
                 temb: Optional[torch.Tensor] = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.fusable(attn, attention_mask):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask,
                                 temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image = hidden_states.ndim == 4
        if image:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        # attn.scale is diffusers' 1/sqrt(head dim) unless the model set its own.
        hidden_states = FusedAttentionOp.apply(query, key, value, int(attn.heads),
                                               float(attn.scale))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # projection, dropout
        if image:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def use_fused_attention(module: torch.nn.Module) -> int:
    """Give every diffusers Attention under ``module`` the fused processor; returns how many."""
    from diffusers.models.attention_processor import Attention as DiffusersAttention

    count = 0
    for sub in module.modules():
        if isinstance(sub, DiffusersAttention):
            sub.set_processor(FusedAttnProcessor())
            count += 1
    return count

