"""The megatron backend's optimizer options (env), checked without megatron-core or a GPU."""

from __future__ import annotations

import pytest
import torch
from rlpost_trainer.megatron_backend import megatron_options


def test_default_is_megatrons_distributed_optimizer_with_fp32_params_on_one_gpu():
    assert megatron_options({}) == ("distributed", torch.float32)
    # Several ranks: the local path by default; Megatron's with TP/PP is refused.
    assert megatron_options({}, world=2) == ("local", torch.float32)
    assert megatron_options({"RLPOST_MEGATRON_OPTIMIZER": "distributed"}, world=2)[0] == (
        "distributed"
    )
    with pytest.raises(ValueError, match="it hung with TP=2"):
        megatron_options({"RLPOST_MEGATRON_OPTIMIZER": "distributed"}, tp=2, world=2)


def test_bf16_params_and_the_local_optimizer():
    env = {"RLPOST_MEGATRON_PARAMS_DTYPE": "bfloat16"}
    assert megatron_options(env) == ("distributed", torch.bfloat16)
    assert megatron_options({"RLPOST_MEGATRON_OPTIMIZER": "local"}) == ("local", torch.float32)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RLPOST_MEGATRON_OPTIMIZER": "apex"}, "RLPOST_MEGATRON_OPTIMIZER='apex'"),
        ({"RLPOST_MEGATRON_PARAMS_DTYPE": "fp8"}, "RLPOST_MEGATRON_PARAMS_DTYPE='fp8'"),
        (
            {"RLPOST_MEGATRON_OPTIMIZER": "local", "RLPOST_MEGATRON_PARAMS_DTYPE": "bfloat16"},
            "needs RLPOST_MEGATRON_OPTIMIZER=distributed",
        ),
    ],
)
def test_bad_options_are_refused_with_the_fix(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        megatron_options(env)
