"""Validation before admission (validation.py): names, the rendered config's size, GPUs per
pod against the nodes a queue can use, custom reward paths. Pure: no API server."""

from __future__ import annotations

from operator_helpers import FLAVORS, job
from rlpost_operator import builders as b
from rlpost_operator import validation as v

from rlpost import api, crdgen

REF = b.JobRef("j", "ns", "uid-1")


def spec(**kw) -> api.RLPostTrainJobSpec:
    return api.RLPostTrainJobSpec.model_validate(job(**kw)["spec"])


def node(name, kind, gpus, taint=False):
    n = {
        "metadata": {"name": name, "labels": {"rlpost.dev/gpu-kind": kind}},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "32"}},
    }
    if taint:
        n["spec"]["taints"] = [
            {"key": "rlpost.dev/gpu-kind", "value": kind, "effect": "NoSchedule"}
        ]
    return n


def cq(*flavors):
    return {
        "metadata": {"name": "team-a"},
        "spec": {
            "resourceGroups": [
                {"coveredResources": ["cpu", "memory"], "flavors": [{"name": "cpu"}]},
                {"coveredResources": ["nvidia.com/gpu"], "flavors": [{"name": f} for f in flavors]},
            ]
        },
    }


NODES = [
    node("gpu-a-0", "a", 8),
    node("gpu-a-1", "a", 8),
    node("gpu-b-0", "b", 16, taint=True),
    node("gpu-c-0", "c", 32),  # no flavor of the queue selects it
]


# ---------------------------------------------------------------------------- names


def test_name_limits_match_the_longest_child_name():
    assert v.name_errors("a" * api.MAX_JOB_NAME) == []
    long = "a" * (api.MAX_JOB_NAME + 1)
    (err,) = v.name_errors(long)
    assert f"at most {api.MAX_JOB_NAME}" in err and "shorter name" in err
    # each pod's name is its hostname (a DNS label: at most 63 characters); the longest is
    # an indexed pod's <job>-<role>-<i>, i < 1024 (the spec's limit on replicas, engines and
    # pool workers): a pool worker's <job>-ray-worker-1023
    longest = b.names("a" * api.MAX_JOB_NAME)
    for role in ("trainer", "worker", "rollout", "ray-worker"):
        assert len(f"{longest[role]}-1023") <= 63, role
    assert all(len(n) <= 63 for n in longest.values())
    ref = b.JobRef("a" * api.MAX_JOB_NAME, "ns", "uid-1")
    pool = {"type": "custom", "function": "m:f", "pool": {"workers": 2}}
    for s in (spec(reward=pool), spec(mode="colocated", trainer={"replicas": 2})):
        for pod in b.build_compute_children(ref, s, b.StartInfo()):
            assert pod["spec"]["hostname"] == pod["metadata"]["name"]
            assert len(pod["metadata"]["name"]) <= 63
            assert len(pod["spec"].get("subdomain", "")) <= 63
    assert v.name_errors("1job") and v.name_errors("Job") and v.name_errors("a.b")


def test_crd_rejects_long_names_with_cel_on_metadata_name():
    root = crdgen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = root["x-kubernetes-validations"]
    assert any(f"size(self.metadata.name) <= {api.MAX_JOB_NAME}" == r["rule"] for r in rules)
    assert any("matches" in r["rule"] for r in rules)


# ---------------------------------------------------------------------------- config size


def test_config_over_one_mib_is_invalid_and_names_the_field():
    big = spec(model={"config": {"hidden_size": 8, "blob": "x" * (1024 * 1024)}})
    (err,) = v.config_size_errors(REF, big.wire())
    assert "j-config" in err and "1 MiB" in err and "spec.model.config.blob" in err
    assert v.config_size_errors(REF, spec().wire()) == []


def test_config_size_counts_like_the_api_server():
    cm = b.build_config_map(REF, spec().wire(), 12)
    size = v.config_map_data_size(cm)
    assert size == sum(len(k) + len(val.encode()) for k, val in cm["data"].items())


# ---------------------------------------------------------------------------- GPU capacity


def test_capacity_follows_flavor_labels_and_taints():
    cap = v.queue_capacity("q", cq("gpu-a", "gpu-b"), FLAVORS, NODES)
    assert cap.nodes == {"gpu-a": {"gpu-a-0": 8, "gpu-a-1": 8}, "gpu-b": {"gpu-b-0": 16}}
    flavors = {
        **FLAVORS,
        "gpu-b": {
            "metadata": {"name": "gpu-b"},
            "spec": FLAVORS["gpu-a"]["spec"] | {"nodeLabels": {"rlpost.dev/gpu-kind": "b"}},
        },
    }
    cap = v.queue_capacity("q", cq("gpu-b"), flavors, NODES)
    assert cap.nodes == {"gpu-b": {}}  # the taint is not tolerated: no node
    assert cap.largest() is None


def test_pod_larger_than_every_node_can_never_be_scheduled():
    cap = v.queue_capacity("q", cq("gpu-a"), FLAVORS, NODES)
    (err,) = v.capacity_errors(spec(trainer={"replicas": 1, "gpusPerPod": 16}), cap)
    assert err.startswith("can never be scheduled: trainer pods request 16 nvidia.com/gpu")
    assert "has 8" in err and "gpu-a-0 8" in err and "trainer.gpusPerPod to at most 8" in err
    errs = v.capacity_errors(spec(rollout={"engines": 1, "gpusPerEngine": 12}), cap)
    assert len(errs) == 1 and "rollout.gpusPerEngine" in errs[0]
    assert v.capacity_errors(spec(trainer={"replicas": 4, "gpusPerPod": 8}), cap) == []
    # a larger flavor of the same queue can hold it
    cap = v.queue_capacity("q", cq("gpu-a", "gpu-b"), FLAVORS, NODES)
    assert v.capacity_errors(spec(trainer={"replicas": 1, "gpusPerPod": 16}), cap) == []


def test_no_matching_node_says_nothing():
    cap = v.queue_capacity("q", cq("gpu-a"), FLAVORS, [node("gpu-c-0", "c", 32)])
    assert v.capacity_errors(spec(trainer={"replicas": 1, "gpusPerPod": 16}), cap) == []
    assert v.capacity_errors(spec(), None) == []


# ---------------------------------------------------------------------------- custom functions


def reward(fn):
    return spec(reward={"type": "custom", "function": fn})


def test_custom_function_in_the_rollout_image_is_checked_from_source():
    assert v.custom_function_errors(reward("rlpost_rollout.rewards.builtin:exact_match")) == []
    (err,) = v.custom_function_errors(reward("rlpost_rollout.rewards.builtin:exact_matc"))
    assert "has no function 'exact_matc'" in err
    (err,) = v.custom_function_errors(reward("rlpost_rollout.rewardz:f"))
    assert "does not exist in the rollout image" in err
    (err,) = v.custom_function_errors(reward("rlpost_rollout.rewards.base:code_exec_fn"))
    assert "takes 1 positional arguments" in err and "(prompt, response, label)" in err


def test_shipped_function_where_the_package_is_absent_is_left_to_the_buffer(monkeypatch):
    """The operator's image has rlpost, not rlpost_rollout: a shipped reward there is not
    refused (the buffer checks it at start; a bad path is InvalidSpec from its exit code)."""
    real = v.importlib.util.find_spec
    monkeypatch.setattr(
        v.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "rlpost_rollout" else real(name, *a),
    )
    assert v.custom_function_errors(reward("rlpost_rollout.rewards.builtin:exact_match")) == []
    assert v.custom_function_errors(reward("rlpost_rollout.rewardz:f")) == []


def test_custom_function_elsewhere_is_left_to_the_buffer():
    assert v.custom_function_errors(reward("mycompany.rewards:score")) == []
    assert v.custom_function_errors(spec()) == []


def test_reward_pool_is_accepted_in_a_cluster():
    """The operator creates the pool (builders/raypool.py): nothing to refuse any more."""
    s = spec()
    s.reward.pool.workers = 2
    assert v.cluster_support_errors(s) == []
    assert v.pre_admission_errors(REF, s, job()["spec"], None) == []


def test_colocated_with_several_pods_or_gpus_is_refused_in_a_cluster():
    """One CPU worker pod runs (tests/operator/test_op_colocated.py); more is refused."""
    s = spec()
    s.mode = api.Mode.COLOCATED
    msgs = v.cluster_support_errors(s)
    assert len(msgs) == 3 and all(m.startswith("mode: colocated in a cluster") for m in msgs)
    assert set(msgs) <= set(v.pre_admission_errors(REF, s, job()["spec"], None))


# ---------------------------------------------------------------- other extension points

SHAPES = """
import os


def rows(data, seed):
    return []


def rows_needing_three(data, seed, more):
    return []


async def generate(prompt, prompt_ids, sampling, router):
    return {}


def generate_sync(prompt, prompt_ids, sampling, router):
    return {}


def keep(group):
    return True


def keep_two(group, other):
    return True
"""


def extension_spec(**fields):
    s = spec()
    s.data.source = fields.get("source")
    s.rollout.generate = fields.get("generate")
    s.algorithm.filter = fields.get("filter")
    return s


def test_data_source_generate_and_filter_are_checked_from_source(tmp_path, monkeypatch):
    (tmp_path / "shipped_ext.py").write_text(SHAPES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(v, "SHIPPED_PACKAGES", ("shipped_ext", *v.SHIPPED_PACKAGES))
    good = extension_spec(
        source="shipped_ext:rows", generate="shipped_ext:generate", filter="shipped_ext:keep"
    )
    assert v.custom_function_errors(good) == []
    errs = v.custom_function_errors(
        extension_spec(
            source="shipped_ext:rows_needing_three",
            generate="shipped_ext:generate_sync",
            filter="shipped_ext:keep_two",
        )
    )
    assert len(errs) == 3, errs
    source, generate, group_filter = errs
    assert source.startswith("data.source 'shipped_ext:rows_needing_three' requires 3")
    assert "rows_needing_three(data, seed)" in source
    assert generate.startswith("rollout.generate 'shipped_ext:generate_sync' is not async")
    assert "generate_sync(prompt, prompt_ids, sampling, router)" in generate
    assert group_filter.startswith("algorithm.filter 'shipped_ext:keep_two' requires 2")
    (err,) = v.custom_function_errors(extension_spec(filter="shipped_ext:nope"))
    assert err == "algorithm.filter 'shipped_ext:nope': module shipped_ext has no function 'nope'"
    # bound some other way (an import): exists; the buffer checks its signature at start
    assert v.custom_function_errors(extension_spec(generate="shipped_ext:os")) == []
    # a custom image's module: the buffer checks it at start
    assert v.custom_function_errors(extension_spec(source="mycompany.data:rows")) == []
    # the rollout image's own packages are read as before
    (err,) = v.custom_function_errors(extension_spec(filter="rlpost_rollout.extensions:zero_stdd"))
    assert "has no function 'zero_stdd'" in err
    assert (
        v.custom_function_errors(extension_spec(filter="rlpost_rollout.extensions:zero_std")) == []
    )


def test_data_needs_prompts_or_a_source():
    s = spec(data={"source": "mycompany.data:rows"})
    assert s.data.prompts is None and api.semantic_errors(s) == []
    s.data.source = None
    assert api.DATA_NEEDS_INPUT in api.semantic_errors(s)
    data = crdgen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    data = data["properties"]["spec"]["properties"]["data"]
    assert "required" not in data
    assert data["x-kubernetes-validations"][0]["rule"] == "has(self.prompts) || has(self.source)"
