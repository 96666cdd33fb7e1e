"""The tiny ChatGLM2 tree wrapped the way the published remote code wraps it, with the
behaviours that break on transformers 5 (our code, mirroring them):
- construction reads `config.max_length` and `config.use_cache`;
- no `post_init()`, and no GenerationMixin base (transformers' auto classes add it);
- its own tuple-cache generation loop: `prepare_inputs_for_generation` with
  `is_first_forward`, and `_update_model_kwargs_for_generation` that calls
  `_extract_past_from_model_output` and extends an attention mask it assumes present.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .tiny_chatglm import ChatGLMModel, GLMConfig


class RemoteStyleConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(
        self,
        num_layers=3,
        hidden_size=64,
        kv_channels=16,
        num_attention_heads=4,
        multi_query_group_num=2,
        ffn_hidden_size=96,
        padded_vocab_size=100,
        seq_length=4096,
        **kwargs,
    ):
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.multi_query_group_num = multi_query_group_num
        self.ffn_hidden_size = ffn_hidden_size
        self.padded_vocab_size = padded_vocab_size
        self.seq_length = seq_length
        super().__init__(**kwargs)


class RemoteStyleChatGLM(PreTrainedModel):
    config_class = RemoteStyleConfig
    base_model_prefix = "transformer"

    def __init__(self, config: RemoteStyleConfig) -> None:
        super().__init__(config)
        self.max_sequence_length = config.max_length  # AttributeError on transformers 5
        inner = GLMConfig(
            num_layers=config.num_layers,
            hidden_size=config.hidden_size,
            kv_channels=config.kv_channels,
            num_attention_heads=config.num_attention_heads,
            multi_query_group_num=config.multi_query_group_num,
            ffn_hidden_size=config.ffn_hidden_size,
            padded_vocab_size=config.padded_vocab_size,
        )
        self.transformer = ChatGLMModel(inner)

    def _init_weights(self, module):
        return

    def forward(
        self,
        input_ids,
        position_ids=None,
        attention_mask=None,
        past_key_values=None,
        use_cache=None,
        return_dict=None,
        return_last_logit=False,
        **kwargs,
    ):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        logits, presents = self.transformer(
            input_ids, attention_mask, past_key_values or None, position_ids
        )
        if return_last_logit:
            logits = logits[:, -1:]
        cache = presents if use_cache else None
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        past_key_values=None,
        attention_mask=None,
        position_ids=None,
        is_first_forward=True,
        **kwargs,
    ):
        if position_ids is None:
            b, n = input_ids.shape
            position_ids = torch.arange(n, device=input_ids.device).expand(b, n)
        if not is_first_forward:
            position_ids, input_ids = position_ids[..., -1:], input_ids[:, -1:]
        return {
            "input_ids": input_ids,
            "past_key_values": past_key_values,
            "position_ids": position_ids,
            "attention_mask": attention_mask,
            "return_last_logit": True,
        }

    def _update_model_kwargs_for_generation(
        self, outputs, model_kwargs, is_encoder_decoder=False, standardize_cache_format=False
    ):
        model_kwargs["past_key_values"] = self._extract_past_from_model_output(
            outputs, standardize_cache_format=standardize_cache_format
        )
        if "attention_mask" in model_kwargs:
            mask = model_kwargs["attention_mask"]
            ones = mask.new_ones((mask.shape[0], 1))
            model_kwargs["attention_mask"] = torch.cat([mask, ones], dim=-1)
        if "position_ids" in model_kwargs:
            pos = model_kwargs["position_ids"]
            model_kwargs["position_ids"] = torch.cat([pos, pos[..., -1:] + 1], dim=-1)
        model_kwargs["is_first_forward"] = False
        return model_kwargs
