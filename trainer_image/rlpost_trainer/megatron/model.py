"""Building a Megatron-core GPTModel that is the same network as rlpost.models' HF Llama.

Needs megatron-core and CUDA (its attention path is CUDA-only). The weights are not
initialised by Megatron: the HF model is built exactly as the engines build it
(spec.model + spec.seed) and converted, so trainer and engines start from the same weights.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rlpost.ports import free_port
from rlpost_trainer.megatron.convert import LlamaShape


def init_distributed(tp: int, pp: int, seed: int) -> None:
    """torch.distributed (env:// from MASTER_ADDR/PORT, RANK, WORLD_SIZE; a one-process
    group when unset) and Megatron's model-parallel groups."""
    from megatron.core import parallel_state as mpu
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        torch.cuda.set_device(local)
        dist.init_process_group(
            "nccl", rank=rank, world_size=world, timeout=dt.timedelta(minutes=10)
        )
    world = dist.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"world size {world} is not divisible by tensor {tp} x pipeline {pp}")
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
        )
    model_parallel_cuda_manual_seed(seed)


def transformer_config(s: LlamaShape, hf_cfg, tp: int, pp: int, dtype: torch.dtype):
    from megatron.core.transformer.transformer_config import TransformerConfig

    kwargs = dict(
        num_layers=s.num_layers,
        hidden_size=s.hidden,
        num_attention_heads=s.heads,
        num_query_groups=s.kv_heads,
        ffn_hidden_size=s.ffn,
        kv_channels=s.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=float(hf_cfg.rms_norm_eps),
        add_bias_linear=False,
        # The family's extras (convert.FAMILIES): qwen2's q/k/v bias, qwen3's QK-norm.
        add_qkv_bias=s.qkv_bias,
        qk_layernorm=s.qk_norm,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        perform_initialization=False,  # weights come from the HF model (same init as engines)
        use_cpu_initialization=False,
        sequence_parallel=False,
        # Micro-batches are trimmed to their own longest row: pipeline stages exchange each
        # activation's shape before it. (Megatron rejects that next to its default MoE
        # dispatcher, "allgather", even in a dense model: name the one it accepts.)
        variable_seq_lengths=pp > 1,
        moe_token_dispatcher_type="alltoall",
    )
    return TransformerConfig(**kwargs)


def rope_theta(hf_cfg) -> float:
    params = getattr(hf_cfg, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(hf_cfg, "rope_theta", 10000.0))


def build_gpt(s: LlamaShape, hf_cfg, tp: int, pp: int, dtype: torch.dtype):
    """This rank's GPTModel (its pipeline stage, its TP shard), on the current GPU."""
    from megatron.core import parallel_state as mpu
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    config = transformer_config(s, hf_cfg, tp, pp, dtype)
    # QK-norm (qwen3) is a module of the layer spec, not only a config flag.
    spec_kwargs: dict = {"qk_layernorm": s.qk_norm}
    if "normalization" in inspect.signature(get_gpt_layer_local_spec).parameters:
        spec_kwargs["normalization"] = "RMSNorm"
    model = GPTModel(
        config,
        transformer_layer_spec=get_gpt_layer_local_spec(**spec_kwargs),
        vocab_size=s.vocab,
        max_sequence_length=int(hf_cfg.max_position_embeddings),
        pre_process=mpu.is_pipeline_first_stage(),
        post_process=mpu.is_pipeline_last_stage(),
        parallel_output=False,  # full-vocab logits on every TP rank (log-softmax needs them)
        share_embeddings_and_output_weights=s.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=rope_theta(hf_cfg),
    )
    return model.cuda()
