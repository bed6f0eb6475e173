"""The spec's extension points: Python functions named by path ("pkg.module:function").

One table for every place that deals with them: the buffer imports and checks each one at
start (`rlpost_rollout.extensions`), the operator reads the ones the rollout image ships from
source before admission (`rlpost_operator.validation.custom_function_errors`), and the
messages of both quote the signature written here. docs/CONTRACTS.md, "Custom functions",
documents what each is called with and returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlpost import api


@dataclass(frozen=True)
class ExtensionPoint:
    field: str  # the spec field as written in YAML
    args: tuple[str, ...]  # the positional arguments it is called with
    returns: str  # what it returns (quoted in error messages)
    is_async: bool = False  # must be `async def` (otherwise: sync or async)

    def call(self, attr: str = "fn") -> str:
        return f"{attr}({', '.join(self.args)})"


REWARD = ExtensionPoint("reward.function", ("prompt", "response", "label"), "a number")
DATA_SOURCE = ExtensionPoint(
    "data.source", ("data", "seed"), "an iterable of rows (dicts with the prompt and label keys)"
)
GENERATE = ExtensionPoint(
    "rollout.generate",
    ("prompt", "prompt_ids", "sampling", "router"),
    "a dict with response_ids, response_logprobs and finish_reason",
    is_async=True,
)
FILTER = ExtensionPoint(
    "algorithm.filter", ("group",), "True to keep the group, False or (False, reason) to drop it"
)
POINTS = (REWARD, DATA_SOURCE, GENERATE, FILTER)


def spec_functions(spec: api.RLPostTrainJobSpec) -> list[tuple[ExtensionPoint, str]]:
    """The extension points the spec sets, with their paths."""
    paths = {
        REWARD: spec.reward.function if spec.reward.type == api.RewardType.CUSTOM else None,
        DATA_SOURCE: spec.data.source,
        GENERATE: spec.rollout.generate,
        FILTER: spec.algorithm.filter,
    }
    return [(point, path) for point, path in paths.items() if path]
