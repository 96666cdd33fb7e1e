"""A small model with ChatGLM2's module tree, tensor layouts and mask conventions.

Written for the adapter tests (the real remote code cannot be downloaded here). What the
adapter relies on is mirrored: `transformer.encoder.layers[i].self_attention.
core_attention(q, k, v, mask)`, multi-query groups expanded to every head before that
call, rotary embedding on half of each head, the boolean mask with True = masked (None
for plain causal prefill), padding query rows opened to every key, tuple KV caches, and
both published layouts: seq-first ([sq, b, ...], the original ChatGLM2 code) and
batch-first (later revisions, which also added `is_causal` to the core attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GLMConfig:
    model_type: str = "chatglm"
    num_layers: int = 3
    hidden_size: int = 64
    kv_channels: int = 16
    num_attention_heads: int = 4
    multi_query_group_num: int = 2
    ffn_hidden_size: int = 96
    padded_vocab_size: int = 100
    layernorm_epsilon: float = 1e-5
    attention_dropout: float = 0.0
    seq_length: int = 4096
    batch_first: bool = False  # the later revisions' layout


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotary_cache(positions: torch.Tensor, rot_dim: int) -> torch.Tensor:
    """[b, n, rot_dim / 2, 2] of (cos, sin) for positions [b, n]."""
    steps = torch.arange(0, rot_dim, 2, dtype=torch.float64, device=positions.device)
    theta = 1.0 / 10000 ** (steps / rot_dim)
    angles = positions.double()[..., None] * theta
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()


def apply_rotary(x: torch.Tensor, cache: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """Rotate interleaved pairs of the first half of each head; the rest passes through.
    x: [n, b, h, d] (seq-first) or [b, h, n, d] (batch-first)."""
    rot = cache.shape[-2] * 2
    head, rest = x[..., :rot], x[..., rot:]
    cos, sin = cache[..., 0], cache[..., 1]  # [b, n, rot / 2]
    if batch_first:
        cos, sin = cos[:, None], sin[:, None]  # [b, 1, n, r]
    else:
        cos, sin = cos.transpose(0, 1)[:, :, None], sin.transpose(0, 1)[:, :, None]
    pairs = head.reshape(*head.shape[:-1], rot // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    turned = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([turned.type_as(x), rest], dim=-1)


class CoreAttention(nn.Module):
    """Seq-first: q, k, v [sq, b, h, d] -> [sq, b, h*d]."""

    def __init__(self, config: GLMConfig, layer_number: int) -> None:
        super().__init__()
        self.num_attention_heads_per_partition = config.num_attention_heads
        self.hidden_size_per_attention_head = config.kv_channels
        self.hidden_size_per_partition = config.kv_channels * config.num_attention_heads
        self.coeff = max(1, layer_number)  # query-key layer scaling: cancels in the product
        self.norm_factor = math.sqrt(config.kv_channels) * self.coeff
        self.attention_dropout = nn.Dropout(config.attention_dropout)  # read by the adapter

    def _attend(self, q, k, v, mask):  # [b, h, n, d]; mask True = masked, as ChatGLM's
        # ChatGLM2 on torch >= 2 runs SDPA: causal when there is no mask, else the inverted
        # mask (its eager path, with the layer-number coefficient, computes the same).
        if mask is None and q.shape[2] == k.shape[2]:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, None if mask is None else ~mask)

    def forward(self, query_layer, key_layer, value_layer, attention_mask):
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query_layer, key_layer, value_layer))
        out = self._attend(q, k, v, attention_mask).permute(2, 0, 1, 3)
        return out.reshape(*out.shape[:2], self.hidden_size_per_partition)


class BatchFirstCoreAttention(CoreAttention):
    """Later revisions: q, k, v [b, h, sq, d] -> [b, sq, h*d]."""

    def __init__(self, config: GLMConfig, layer_number: int) -> None:
        super().__init__(config, layer_number)
        self.is_causal = True

    def forward(self, query_layer, key_layer, value_layer, attention_mask):
        out = self._attend(query_layer, key_layer, value_layer, attention_mask).transpose(1, 2)
        return out.reshape(*out.shape[:2], self.hidden_size_per_partition)


class SelfAttention(nn.Module):
    def __init__(self, config: GLMConfig, layer_number: int) -> None:
        super().__init__()
        self.config = config
        self.heads, self.groups, self.dim = (
            config.num_attention_heads, config.multi_query_group_num, config.kv_channels
        )  # fmt: skip
        qkv = (self.heads + 2 * self.groups) * self.dim
        self.query_key_value = nn.Linear(config.hidden_size, qkv, bias=True)
        core = BatchFirstCoreAttention if config.batch_first else CoreAttention
        self.core_attention = core(config, layer_number)
        self.dense = nn.Linear(self.heads * self.dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask, rotary_pos_emb, kv_cache=None):
        mixed = self.query_key_value(hidden_states)  # [sq, b, .] or [b, sq, .]
        sizes = [self.heads * self.dim, self.groups * self.dim, self.groups * self.dim]
        q, k, v = mixed.split(sizes, dim=-1)
        q = q.view(*q.shape[:-1], self.heads, self.dim)
        k = k.view(*k.shape[:-1], self.groups, self.dim)
        v = v.view(*v.shape[:-1], self.groups, self.dim)
        seq_axis = 0
        if self.config.batch_first:  # [b, sq, h, d] -> [b, h, sq, d]
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            seq_axis = 2
        q = apply_rotary(q, rotary_pos_emb, self.config.batch_first)
        k = apply_rotary(k, rotary_pos_emb, self.config.batch_first)
        if kv_cache is not None:
            k = torch.cat((kv_cache[0], k), dim=seq_axis)
            v = torch.cat((kv_cache[1], v), dim=seq_axis)
        present = (k, v)
        group_axis = 1 if self.config.batch_first else 2
        repeat = self.heads // self.groups
        k = k.repeat_interleave(repeat, dim=group_axis).contiguous()
        v = v.repeat_interleave(repeat, dim=group_axis).contiguous()
        context = self.core_attention(q, k, v, attention_mask)
        return self.dense(context), present


class GLMBlock(nn.Module):
    def __init__(self, config: GLMConfig, layer_number: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = SelfAttention(config, layer_number)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.ffn_hidden_size, bias=False),
            nn.SiLU(),
            nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=False),
        )

    def forward(self, x, mask, rope, kv_cache=None):
        attn, present = self.self_attention(self.input_layernorm(x), mask, rope, kv_cache)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), present


class GLMTransformer(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(config, i + 1) for i in range(config.num_layers))
        self.final_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)


class ChatGLMModel(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.encoder = GLMTransformer(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)

    @staticmethod
    def get_masks(n: int, past: int, padding_mask: torch.Tensor | None, device=None):
        """ChatGLM's convention: [b, 1, n, past + n], True = masked."""
        b = 1 if padding_mask is None else padding_mask.shape[0]
        full = torch.ones(b, n, n, device=device).tril()
        if past:
            full = torch.cat([torch.ones(b, n, past, device=device), full], dim=-1)
        if padding_mask is not None:
            full = full * padding_mask[:, None, :].float()
            if not past:
                full -= padding_mask[:, :, None].float() - 1  # padding rows see everything
        return (full < 0.5)[:, None]

    def forward(self, input_ids, attention_mask=None, past_key_values=None, position_ids=None):
        b, n = input_ids.shape
        past = 0 if past_key_values is None else past_key_values[0][0].shape[
            2 if self.config.batch_first else 0]  # fmt: skip
        mask = None
        if (attention_mask is not None and not attention_mask.all()) or (past and n != 1):
            mask = self.get_masks(n, past, attention_mask, input_ids.device)
        x = self.embedding(input_ids)  # [b, n, h]
        if not self.config.batch_first:
            x = x.transpose(0, 1).contiguous()  # [n, b, h]
        if position_ids is None:
            position_ids = torch.arange(past, past + n, device=input_ids.device).expand(b, n)
        rope = rotary_cache(position_ids, self.config.kv_channels // 2)
        presents = []
        for i, layer in enumerate(self.encoder.layers):
            cache = None if past_key_values is None else past_key_values[i]
            x, present = layer(x, mask, rope, cache)
            presents.append(present)
        x = self.encoder.final_layernorm(x)
        logits = self.output_layer(x)
        if not self.config.batch_first:
            logits = logits.transpose(0, 1)
        return logits.float(), tuple(presents)


class ChatGLMForConditionalGeneration(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = ChatGLMModel(config)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, position_ids=None):
        return self.transformer(input_ids, attention_mask, past_key_values, position_ids)

    @torch.no_grad()
    def greedy(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Prefill, then one token at a time from the KV cache."""
        logits, cache = self(input_ids)
        out = [logits[:, -1].argmax(-1)]
        for _ in range(new_tokens - 1):
            logits, cache = self(out[-1][:, None], past_key_values=cache)
            out.append(logits[:, -1].argmax(-1))
        return torch.stack(out, dim=1)


def tiny_chatglm(batch_first: bool = False, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = ChatGLMForConditionalGeneration(GLMConfig(batch_first=batch_first, **overrides))
    return model.eval()
