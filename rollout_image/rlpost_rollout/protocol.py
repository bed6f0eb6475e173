"""SGLang's HTTP request bodies, as the reference engine accepts them.

Field names are SGLang's (sglang/srt/managers/io_struct.py, sampling/sampling_params.py);
tests/rollout/test_sglang_contract.py checks every field here against the pinned wheel.
Only the fields the reference engine implements are declared; generate bodies ignore other
SGLang fields (the router may add some), control bodies reject unknown ones.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingParams(Lenient):
    max_new_tokens: int = Field(128, ge=0)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = -1  # -1 = all tokens (SGLang's TOP_K_ALL)
    min_new_tokens: int = Field(0, ge=0)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    sampling_seed: int | None = None
    n: int = Field(1, ge=1, le=1)  # one sample per request: the buffer sends a group as n requests


class GenerateReqInput(Lenient):
    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: SamplingParams = SamplingParams()
    return_logprob: bool = False
    logprob_start_len: int = -1  # SGLang: -1 = no input logprobs
    rid: str | None = None
    stream: bool = False


class InitWeightsUpdateGroupReqInput(Strict):
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    group_name: str = "weight_update_group"
    backend: str = "nccl"


class DestroyWeightsUpdateGroupReqInput(Strict):
    group_name: str = "weight_update_group"


class UpdateWeightsFromDistributedReqInput(Strict):
    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    group_name: str = "weight_update_group"
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: str | None = None
    load_format: str | None = None


class UpdateWeightsFromTensorReqInput(Strict):
    serialized_named_tensors: list[str]  # base64, one per TP rank (we have one)
    load_format: str | None = None
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: str | None = None


class UpdateWeightFromDiskReqInput(Strict):
    model_path: str
    load_format: str | None = None
    abort_all_requests: bool = False
    weight_version: str | None = None
    flush_cache: bool = True


class MemoryOccupationReqInput(Strict):
    """Release/ResumeMemoryOccupationReqInput: tags in {"weights", "kv_cache", ...}."""

    tags: list[str] | None = None


class PauseGenerationReqInput(Strict):
    mode: Literal["abort", "retract", "in_place"] = "abort"


class ContinueGenerationReqInput(Strict):
    torch_empty_cache: bool = True


class AbortReq(Strict):
    rid: str | None = None
    abort_all: bool = False


class UpdateWeightVersionReqInput(Strict):
    new_version: str
    abort_all_requests: bool = True


class ChatMessage(Lenient):
    role: str
    content: str


class ChatCompletionRequest(Lenient):
    """The OpenAI fields the reference engine honours."""

    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool = False


class SuccessResponse(BaseModel):
    success: bool
    message: str


# Which request model each control path parses: the contract test pairs these with
# SGLang's dataclasses of the same name.
CONTROL_MODELS: dict[str, type[BaseModel]] = {
    "/init_weights_update_group": InitWeightsUpdateGroupReqInput,
    "/destroy_weights_update_group": DestroyWeightsUpdateGroupReqInput,
    "/update_weights_from_distributed": UpdateWeightsFromDistributedReqInput,
    "/update_weights_from_tensor": UpdateWeightsFromTensorReqInput,
    "/update_weights_from_disk": UpdateWeightFromDiskReqInput,
    "/release_memory_occupation": MemoryOccupationReqInput,
    "/resume_memory_occupation": MemoryOccupationReqInput,
    "/pause_generation": PauseGenerationReqInput,
    "/continue_generation": ContinueGenerationReqInput,
    "/abort_request": AbortReq,
    "/update_weight_version": UpdateWeightVersionReqInput,
}


def generate_payload(
    input_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = -1,
    stop: list[str] | None = None,
    return_logprob: bool = True,
    rid: str | None = None,
    sampling_seed: int | None = None,
) -> dict[str, Any]:
    """The /generate body the buffer sends (SGLang GenerateReqInput); checked by the contract
    test, so keep every key an SGLang field."""
    sampling: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
    }
    if stop:
        sampling["stop"] = stop
    if sampling_seed is not None:
        sampling["sampling_seed"] = sampling_seed
    body: dict[str, Any] = {
        "input_ids": input_ids,
        "sampling_params": sampling,
        "return_logprob": return_logprob,
        "stream": False,
    }
    if rid is not None:
        body["rid"] = rid
    return body
