"""Custom functions by Python path beyond the reward (docs/CONTRACTS.md, "Custom functions"):
a data source, a generate function and a group filter, each used by a real buffer against a
real engine; a path that does not import or does not fit ends the buffer at start with exit
code 78 and the field named in its termination message."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from rlpost_rollout.buffer import __main__ as buffer_main
from rlpost_rollout.buffer.driver import sample_seed

from tests.rollout.procs import ROOT, auth, write_job, write_prompts

EXTENSIONS = """
import json
import os


def rows(data, seed):
    # The spec's data section (wire form) and seed: rows keyed as data says, made of digits
    # no JSONL file of the test has, plus one row without a label (rejected, as in a file).
    p, lab = data["promptKey"], data["labelKey"]
    out = [{p: f"{seed}{i}+{i}=", lab: str(2 * i)} for i in range(5)]
    return iter(out + [{p: "99+0="}])


def _log(record):
    with open(os.environ["EXT_LOG"], "a") as f:
        f.write(json.dumps(record) + "\\n")


async def two_pass(prompt, prompt_ids, sampling, router):
    # An answer in two /generate calls: 2 tokens, then 3 more continuing from them.
    first = await router.generate(prompt_ids, max_new_tokens=2)
    ids, lps, finish = first["response_ids"], first["response_logprobs"], first["finish_reason"]
    calls = 1
    if finish == "length":
        second = await router.generate(prompt_ids + ids, max_new_tokens=3)
        ids, lps = ids + second["response_ids"], lps + second["response_logprobs"]
        finish, calls = second["finish_reason"], 2
    _log({"prompt": prompt, "seed": sampling["sampling_seed"], "ids": ids, "calls": calls})
    return {"response_ids": ids, "response_logprobs": lps, "finish_reason": finish}


def not_multiple_of_4(group):
    assert all("reward" in s for s in group["samples"])
    if int(group["label"]) % 4 == 0:
        return False, "label multiple of 4"
    return True


def sync_generate(prompt, prompt_ids, sampling, router):
    return {}
"""


def start(procs, tmp_path: Path, **spec) -> tuple[str, str]:
    (tmp_path / "my_ext.py").write_text(EXTENSIONS)
    prompts = write_prompts(tmp_path / "p.jsonl", n=16)
    job = write_job(tmp_path, prompts, **spec)
    if "source" in spec.get("data", {}):  # a data source and no JSONL file
        doc = yaml.safe_load(job.read_text())
        del doc["spec"]["data"]["prompts"]
        job.write_text(yaml.safe_dump(doc))
    _, engine = procs.engine(job)
    pythonpath = f"{tmp_path}:{ROOT}:{ROOT / 'rollout_image'}"
    env = {"PYTHONPATH": pythonpath, "EXT_LOG": str(tmp_path / "ext.jsonl")}
    _, url = procs.buffer(job, engine, tmp_path / "state", **env)
    return url, engine


def batch(url: str, step: int = 0) -> list[dict]:
    r = httpx.get(
        f"{url}/batch", params={"step": step, "timeout_s": 60}, headers=auth(), timeout=70
    )
    assert r.status_code == 200, r.text
    return r.json()["groups"]


def test_data_source_rows_are_the_prompts_trained_on(procs, tmp_path):
    url, _ = start(
        procs,
        tmp_path,
        seed=7,
        data={"source": "my_ext:rows", "promptKey": "q", "labelKey": "answer"},
        algorithm={"rolloutBatchSize": 5},
    )
    groups = batch(url)
    # every one of the function's five good rows, none of the JSONL file's
    assert sorted(g["prompt"] for g in groups) == [f"7{i}+{i}=" for i in range(5)]
    assert all(g["label"] == str(2 * int(g["prompt"][1])) for g in groups)
    stats = httpx.get(f"{url}/stats", headers=auth(), timeout=10).json()
    assert stats["rejected_rows"] == [
        {"where": "my_ext:rows[5]", "reason": "missing label key 'answer'"}
    ], stats


def test_custom_generate_calls_reach_the_engine_and_its_answers_are_the_samples(procs, tmp_path):
    url, engine = start(procs, tmp_path, rollout={"generate": "my_ext:two_pass"})
    groups = batch(url)
    assert len(groups) == 2
    calls = [json.loads(x) for x in (tmp_path / "ext.jsonl").read_text().splitlines()]
    assert len(calls) == 8  # one per sample: 2 groups x groupSize 4
    assert sum(c["calls"] for c in calls) > 8  # two-pass answers happened
    info = httpx.get(f"{engine}/server_info", timeout=10).json()
    # every /generate the engine served was one of the function's calls
    assert info["internal_states"][0]["requests_total"] == sum(c["calls"] for c in calls)
    made = sorted((c["prompt"], c["ids"]) for c in calls)
    trained = sorted((g["prompt"], s["response_ids"]) for g in groups for s in g["samples"])
    assert trained == made
    assert any(len(ids) > 2 for _, ids in trained)  # longer than one call's max_new_tokens
    # the samples' sampling seeds reached the function (sample j of prompt i: sample_seed)
    expected = {sample_seed(0, g["prompt_index"], j) for g in groups for j in range(4)}
    assert {c["seed"] for c in calls} == expected
    for g in groups:
        for s in g["samples"]:
            assert len(s["response_logprobs"]) == len(s["response_ids"])


def test_filtered_groups_never_reach_a_batch_and_are_counted_under_their_reason(procs, tmp_path):
    url, _ = start(
        procs,
        tmp_path,
        algorithm={"filter": "my_ext:not_multiple_of_4", "rolloutBatchSize": 4},
    )
    groups = batch(url)
    assert len(groups) == 4
    assert all(int(g["label"]) % 4 != 0 for g in groups)  # label 2i: odd i only
    stats = httpx.get(f"{url}/stats", headers=auth(), timeout=10).json()
    # prompts 10, 2, 0 and 6 come first in the seeded order: all dropped, then refilled
    assert stats["dropped_groups"].get("label_multiple_of_4", 0) >= 4, stats
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'rlpost_samples_total{job="rtest",outcome="label_multiple_of_4"} 16.0' in metrics


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"data": {"source": "no_such_mod_q:rows"}}, "data.source 'no_such_mod_q:rows': cannot"),
        (
            {"rollout": {"generate": "my_ext:nothing_here"}},
            "rollout.generate 'my_ext:nothing_here': my_ext has no function 'nothing_here'",
        ),
        (
            {"rollout": {"generate": "my_ext:sync_generate"}},
            "rollout.generate 'my_ext:sync_generate' must be an async function",
        ),
        (
            {"algorithm": {"filter": "my_ext:rows"}},
            "algorithm.filter 'my_ext:rows' cannot be called as fn(group)",
        ),
    ],
)
def test_a_function_that_does_not_import_or_fit_ends_the_buffer_with_78(
    tmp_path, monkeypatch, spec, says
):
    (tmp_path / "my_ext.py").write_text(EXTENSIONS)
    monkeypatch.syspath_prepend(str(tmp_path))
    job = {
        "apiVersion": "rlpost.dev/v1alpha1",
        "kind": "RLPostTrainJob",
        "metadata": {"name": "j"},
        "spec": {"model": {"config": {"hidden_size": 8}}, "data": {"prompts": "p.jsonl"}, **spec},
    }
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps(job))
    log = tmp_path / "termination-log"
    monkeypatch.setenv("RLPOST_TERMINATION_LOG", str(log))
    monkeypatch.setenv("RLPOST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RLPOST_ROUTER_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as exc:
        buffer_main.main(["--config", str(cfg)])
    assert exc.value.code == 78
    assert says in log.read_text()


def test_the_default_path_still_sends_generate_payload():
    import inspect

    from rlpost_rollout.buffer import driver

    assert "generate_payload(" in inspect.getsource(driver.Driver._generate)


@pytest.mark.asyncio
async def test_filter_and_generate_answers_are_checked():
    from rlpost_rollout import extensions as ext

    group = {"label": "1", "samples": [{"reward": 1.0}, {"reward": 1.0}]}
    assert await ext.apply_filters([("dynamicSampling", ext.zero_std)], group) == "zero_std"
    assert await ext.apply_filters([("f", lambda g: (False, "Too Long!"))], group) == "too_long"
    assert await ext.apply_filters([("f", lambda g: (False, "accepted"))], group) == (
        "filter_accepted"
    )
    with pytest.raises(ext.FilterError, match="f returned 'yes'"):
        await ext.apply_filters([("f", lambda g: "yes")], group)
    with pytest.raises(ext.FilterError, match="f raised ZeroDivisionError"):
        await ext.apply_filters([("f", lambda g: 1 / 0)], group)

    class Row:
        prompt, prompt_ids = "1+1=", (1, 5)

    router = ext.SampleRouter(None, "r", {"sampling_seed": 3}, None, 0)

    async def short(prompt, prompt_ids, sampling, router):
        return {"response_ids": [4, 5], "response_logprobs": [-1.0], "finish_reason": "stop"}

    with pytest.raises(ext.GenerateError, match="one logprob per response token"):
        await ext.custom_generate(short, "rollout.generate 'm:short'", Row, router)
    with pytest.raises(ext.GenerateError, match="unknown sampling params"):
        await router.generate([1], temprature=0.5)
