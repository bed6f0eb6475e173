"""spec.eval: optional, its defaults, the checks on bad values and combinations (pydantic,
semantic_errors, the same rules as CEL in the CRD), and where its file is read from."""

from __future__ import annotations

import pytest
from operator_helpers import job
from pydantic import ValidationError

from rlpost import api, crdgen
from rlpost.local.spec import resolve_local_paths
from rlpost.storage import resolve_spec_paths


def spec(**kw) -> api.RLPostTrainJobSpec:
    return api.RLPostTrainJobSpec.model_validate(job(**kw)["spec"])


def test_eval_is_optional_with_sane_defaults():
    assert spec().eval is None
    ev = spec(eval={"prompts": "held-out.jsonl"}).eval
    assert (ev.interval_steps, ev.samples, ev.temperature, ev.max_new_tokens) == (50, 4, 1.0, None)
    assert ev.wire() == {"prompts": "held-out.jsonl", "intervalSteps": 50, "samples": 4,
                         "temperature": 1.0}  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [
        {},  # no prompts
        {"prompts": ""},
        {"prompts": "e.jsonl", "samples": 0},
        {"prompts": "e.jsonl", "intervalSteps": 0},
        {"prompts": "e.jsonl", "temperature": 0},  # k greedy samples: pass@k would be greedy
        {"prompts": "e.jsonl", "maxNewTokens": 0},
        {"prompts": "e.jsonl", "passAtK": 4},  # unknown field
    ],
)
def test_bad_eval_values_are_rejected(bad):
    with pytest.raises(ValidationError):
        spec(eval=bad)


def test_eval_on_the_training_file_is_a_semantic_error_and_a_cel_rule():
    ok = spec(eval={"prompts": "e.jsonl", "intervalSteps": 10}, steps=100)
    assert api.semantic_errors(ok) == []
    # An interval longer than the run is fine: the last step is always evaluated.
    late = spec(eval={"prompts": "e.jsonl", "intervalSteps": 101}, steps=100)
    assert api.semantic_errors(late) == []
    same = spec(eval={"prompts": "p.jsonl"})  # data.prompts is p.jsonl
    assert api.semantic_errors(same) == [api.spec.EVAL_HELD_OUT]
    schema = crdgen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = {
        r["message"]: r["rule"] for r in schema["properties"]["spec"]["x-kubernetes-validations"]
    }
    assert not [r for r in rules.values() if "intervalSteps" in r]
    assert "self.eval.prompts != self.data.prompts" in rules[api.spec.EVAL_HELD_OUT]
    ev = schema["properties"]["spec"]["properties"]["eval"]
    assert ev["required"] == ["prompts"]
    temp = ev["properties"]["temperature"]
    assert temp["minimum"] == 0 and temp["exclusiveMinimum"] is True


def test_eval_prompts_are_read_where_data_prompts_are(tmp_path):
    s = spec(eval={"prompts": "held/out.jsonl"}, data={"prompts": "p.jsonl", "pvc": "d"})
    assert resolve_spec_paths(s).eval.prompts == "/data/held/out.jsonl"  # the data PVC
    s = spec(eval={"prompts": "/abs/e.jsonl"}, data={"prompts": "p.jsonl", "pvc": "d"})
    assert resolve_spec_paths(s).eval.prompts == "/abs/e.jsonl"
    j = api.RLPostTrainJob.model_validate(job(eval={"prompts": "e.jsonl"}))
    assert resolve_local_paths(j, tmp_path).spec.eval.prompts == str(tmp_path / "e.jsonl")
