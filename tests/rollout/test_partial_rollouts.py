"""Partial rollouts and over-sampling (spec rollout.partialRollouts, rollout.overSampling;
docs/CONTRACTS.md "Partial rollouts"): a weight update's abort answers with the tokens made so
far (as SGLang's does), the buffer resumes them on the new weights and the sample records
every version it spans; without partialRollouts the groups are drawn again. Through real
processes: reference engines, the sglang-router, the buffer; the test plays the trainer
(pause abort -> version bump -> continue -> POST /weight_version, as WeightSender does)."""

from __future__ import annotations

import math
import threading
import time

import httpx
import pytest
from rlpost_rollout import extensions as ext
from rlpost_rollout import partial
from rlpost_trainer.batch import Batch, collate

from rlpost.models import CharTokenizer
from tests.rollout.procs import ALPHABET, ROOT, auth, write_job, write_prompts

MAX_NEW = 64  # long generations: a weight update lands while they run
TOK = CharTokenizer(ALPHABET)


# ---------------------------------------------------------------------------- unit


@pytest.mark.asyncio
async def test_an_aborted_answer_is_resumed_with_the_rest_of_its_budget_and_a_new_seed():
    calls = []
    answers = [
        # aborted after 3 tokens on version 4 (SGLang: the tokens so far, finish abort)
        ({"type": "abort"}, [5, 6, 7], "4"),
        # aborted before prefill (queued): no tokens, no output_token_logprobs
        ({"type": "abort", "message": "Abort before prefill"}, None, "5"),
        ({"type": "length", "length": 2}, [8, 9], "5"),
    ]

    async def raw(ids, rid, sampling, key):
        calls.append((list(ids), rid, dict(sampling), key))
        finish, toks, version = answers[len(calls) - 1]
        meta = {"finish_reason": finish, "weight_version": version}
        if toks is not None:
            meta["output_token_logprobs"] = [[-0.1 * t, t, None] for t in toks]
        return {"text": TOK.decode(toks or []), "meta_info": meta}

    kept = []
    router = ext.SampleRouter(
        raw, "g3-1", {"max_new_tokens": 5, "sampling_seed": 11}, TOK, 4,
        partial=True, on_resume=kept.append,
    )  # fmt: skip
    out = await router.generate([1, 2])
    assert out["response_ids"] == [5, 6, 7, 8, 9]
    assert out["response_logprobs"] == pytest.approx([-0.5, -0.6, -0.7, -0.8, -0.9])
    assert (out["finish_reason"], out["weight_versions"]) == ("length", [4, 5])
    assert out["text"] == TOK.decode([5, 6, 7, 8, 9])
    # resume: prompt + kept tokens, what is left of max_new_tokens, a derived seed, same key
    assert [c[0] for c in calls] == [[1, 2], [1, 2, 5, 6, 7], [1, 2, 5, 6, 7]]
    assert [c[2]["max_new_tokens"] for c in calls] == [5, 2, 2]
    seeds = [c[2]["sampling_seed"] for c in calls]
    assert seeds == [11, partial.resume_seed(11, 1), partial.resume_seed(11, 2)]
    assert len(set(seeds)) == 3 and all(0 <= s < 2**63 for s in seeds)
    assert [c[1] for c in calls] == ["g3-1", "g3-1-r1", "g3-1-r2"]
    assert {c[3] for c in calls} == {"g3-1"}
    assert router.resumes == kept == [3, 3] and router.calls == 1  # resumes are not turns
    assert (router.oldest_version, router.versions) == (4, {4, 5})

    # without partial rollouts the abort is raised: the group is drawn again
    calls.clear()
    router = ext.SampleRouter(raw, "g3-1", {"max_new_tokens": 5}, TOK, 4)
    with pytest.raises(ext.Aborted):
        await router.generate([1, 2])


def test_a_resumed_group_is_judged_on_the_version_that_finished_it_at_most_one_newer():
    plain = [{"weight_version": 3, "weight_versions": [3, 4]}, {"weight_version": 4}]
    assert partial.judged_version(plain) == 3  # nothing resumed: the oldest, as before
    resumed = [
        {"weight_version": 3, "weight_versions": [3, 4], "resumes": [7]},
        {"weight_version": 3, "weight_versions": [3]},  # finished before the update
    ]
    assert partial.judged_version(resumed) == 4
    twice = [{"weight_version": 3, "weight_versions": [3, 4, 5], "resumes": [7, 12]}]
    assert partial.judged_version(twice) == 4  # a token trains <= maxStaleness + 1 later
    same = [{"weight_version": 3, "weight_versions": [3], "resumes": [2]}]  # no new weights
    assert partial.judged_version(same) == 3


# ---------------------------------------------------------------------------- processes


def _job(tmp_path, **rollout):
    prompts = write_prompts(tmp_path / "p.jsonl", 40)
    return write_job(
        tmp_path,
        prompts,
        model={  # big enough that a generation outlasts the test's reaction time
            "config": {
                "max_position_embeddings": 96,
                # big enough that 64 tokens take a while on a CPU (the pushes must land
                # mid-generation)
                "hidden_size": 512,
                "intermediate_size": 1024,
                "num_hidden_layers": 8,
            },
            "tokenizer": f"char:{ALPHABET}",
            "dtype": "float32",
        },
        algorithm={"groupSize": 2, "rolloutBatchSize": 4, "dynamicSampling": False},
        rollout={"maxNewTokens": MAX_NEW, "maxStaleness": 0, **rollout},
    )


def _post(url: str, path: str, body: dict) -> dict:
    r = httpx.post(f"{url}{path}", json=body, headers=auth(), timeout=30)
    assert r.status_code == 200, (path, r.text)
    return r.json()


def _running(engines: list[str]) -> int:
    return sum(
        httpx.get(f"{u}/v1/loads", timeout=5).json()["loads"][0]["num_running_reqs"]
        for u in engines
    )


def _push(engines: list[str], buffer: str, version: int) -> None:
    """What the trainer's weight push does to the engines (pause mode abort: maxStaleness 0),
    with a version bump for the update, then the buffer hears of the new version."""
    for u in engines:
        _post(u, "/pause_generation", {"mode": "abort"})
    for u in engines:
        _post(
            u, "/update_weight_version", {"new_version": str(version), "abort_all_requests": False}
        )
    for u in engines:
        _post(u, "/continue_generation", {})
    _post(buffer, "/weight_version", {"version": version})


def _push_while_generating(engines: list[str], buffer: str, landed, pushes: int = 12) -> int:
    """Push updates mid-generation until `landed()` says one hit running requests (at most
    `pushes`). A generation here takes ~0.1 s, so each attempt first freezes the engines
    (pause in_place keeps the running requests where they are) a little later into the
    generation than the one before, then pushes: the push's pause mode abort ends the frozen
    requests with the tokens they have. Returns how many pushes found requests running."""
    hits = 0
    for version in range(1, pushes + 1):
        deadline = time.monotonic() + 10
        while not _running(engines) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.02 * version)
        for u in engines:
            _post(u, "/pause_generation", {"mode": "in_place"})
        running = _running(engines) > 0
        hits += running
        _push(engines, buffer, version)
        if not running:
            break  # every request finished: nothing left to interrupt
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if landed():
                return hits
            if _running(engines):
                break  # running again, not landed: the next attempt freezes later
            time.sleep(0.01)
    return hits


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and want in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _start(procs, tmp_path, job, **env):
    """Engines, router and buffer; the buffer's first requests are held in the engines'
    queues (pause in_place) until `_release`."""
    engines = [procs.engine(job)[1]]  # one is enough (and each costs a start-up)
    for u in engines:
        _post(u, "/pause_generation", {"mode": "in_place"})
    _, router = procs.router(job, engines)
    _, buffer = procs.buffer(job, router, tmp_path / "state", **env)
    return engines, buffer


def _release(engines: list[str], buffer: str, groups: int) -> dict:
    """Once `groups` groups are in flight, let the engines run them."""
    deadline = time.monotonic() + 30
    stats: dict = {}
    while time.monotonic() < deadline:
        stats = httpx.get(f"{buffer}/stats", headers=auth(), timeout=5).json()
        if stats["inflight_groups"] >= groups:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # every request of them in the queues
    stats = httpx.get(f"{buffer}/stats", headers=auth(), timeout=5).json()
    for u in engines:
        _post(u, "/continue_generation", {})
    return stats


def _batch(buffer: str, step: int) -> dict:
    r = httpx.get(
        f"{buffer}/batch", params={"step": step, "timeout_s": 120}, headers=auth(), timeout=130
    )
    assert r.status_code == 200, r.text
    return r.json()


def _check_samples(batch: dict, engines: list[str]) -> list[dict]:
    """Every sample whole and consistent: no abort left in it, ids/logprobs/text aligned, each
    response ends at maxNewTokens or on EOS, and its logprobs are the engine's own on the
    whole sequence (a resume continued the sequence, not restarted it: the weights never
    change here, only their version)."""
    samples = [s for g in batch["groups"] for s in g["samples"]]
    for g in batch["groups"]:
        assert [s["sample_id"] for s in g["samples"]] == [f"{g['group_id']}-{j}" for j in (0, 1)]
    for s in samples:
        ids, lps = s["response_ids"], s["response_logprobs"]
        assert len(ids) == len(lps) > 0 and all(math.isfinite(x) and x <= 0 for x in lps)
        assert s["response"] == TOK.decode(ids)
        assert s["finish_reason"] in ("stop", "length"), s
        if s["finish_reason"] == "length":
            assert len(ids) == MAX_NEW, s
        else:
            assert ids[-1] in TOK.eos_token_ids and len(ids) <= MAX_NEW, s
        assert s["weight_versions"][0] == s["weight_version"]
        body = {
            "input_ids": s["prompt_ids"] + ids,
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": len(s["prompt_ids"]),
        }
        r = httpx.post(f"{engines[0]}/generate", json=body, timeout=30).json()
        again = [lp for lp, _, _ in r["meta_info"]["input_token_logprobs"]]
        assert again == pytest.approx(lps, abs=1e-4), s["sample_id"]
    # the trainer reads them as they are: logprobs and mask aligned with the response
    train = collate(Batch.model_validate(batch), TOK.pad_token_id)
    assert int(train.loss_mask.sum()) == sum(len(s["response_ids"]) for s in samples)
    return samples


def test_partial_rollouts_resume_aborted_samples_on_new_weights_and_lose_none(procs, tmp_path):
    job = _job(tmp_path, partialRollouts=True)
    engines, buffer = _start(procs, tmp_path, job)
    _release(engines, buffer, 4)
    hits = _push_while_generating(
        engines, buffer, lambda: _metric(buffer, "rlpost_resumed_tokens_total") > 0
    )
    assert hits >= 1
    batch = _batch(buffer, 0)
    samples = _check_samples(batch, engines)
    # nothing drawn again: the first four prompts, once each, no group dropped or aborted
    assert sorted(g["prompt_index"] for g in batch["groups"]) == [0, 1, 2, 3]
    stats = httpx.get(f"{buffer}/stats", headers=auth(), timeout=5).json()
    assert stats["dropped_groups"] == {}  # (the live version 3 lets it go on for step 1)
    assert _metric(buffer, "rlpost_samples_total", outcome="aborted") == 0
    resumed = [s for s in samples if s.get("resumes")]
    assert resumed, "no sample was interrupted mid-generation"
    for s in resumed:
        assert all(0 <= k < MAX_NEW for k in s["resumes"])
        if any(s["resumes"]):  # it had tokens when aborted: they and the rest span versions
            assert len(s["weight_versions"]) >= 2, s
            assert s["weight_versions"] == sorted(s["weight_versions"])
    assert any(len(s["weight_versions"]) >= 2 for s in resumed)
    for g in batch["groups"]:  # judged on what finished it, at most one newer than its oldest
        oldest = min(s["weight_version"] for s in g["samples"])
        assert g["oldest_weight_version"] == oldest
        assert oldest <= g["weight_version"] <= oldest + 1
    assert _metric(buffer, "rlpost_resumed_requests_total") >= len(resumed)
    kept = sum(sum(s["resumes"]) for s in resumed)
    assert _metric(buffer, "rlpost_resumed_tokens_total") == kept > 0
    print(
        f"{hits} pushes hit running requests; {len(resumed)}/{len(samples)} samples "
        f"resumed, {kept} tokens kept; versions {[s['weight_versions'] for s in resumed]}"
    )


def test_without_partial_rollouts_aborted_groups_are_drawn_again(procs, tmp_path):
    job = _job(tmp_path)
    engines, buffer = _start(procs, tmp_path, job)
    _release(engines, buffer, 4)
    hits = _push_while_generating(
        engines, buffer, lambda: _metric(buffer, "rlpost_samples_total", outcome="aborted") > 0
    )
    assert hits >= 1
    batch = _batch(buffer, 0)
    samples = _check_samples(batch, engines)
    aborted = _metric(buffer, "rlpost_samples_total", outcome="aborted")
    assert aborted >= 2, "no group was aborted"  # a whole group each time
    assert _metric(buffer, "rlpost_resumed_requests_total") == 0
    # the aborted prompts were drawn again: still the first four, once each
    assert sorted(g["prompt_index"] for g in batch["groups"]) == [0, 1, 2, 3]
    assert not any("resumes" in s for s in samples)


FILTER = """
def even(group):
    return group["prompt_index"] % 2 == 0, "odd"
"""


def test_over_sampling_keeps_more_groups_in_flight_and_the_batch_takes_the_first_kept(
    procs, tmp_path
):
    (tmp_path / "os_ext.py").write_text(FILTER)
    prompts = write_prompts(tmp_path / "p.jsonl", 40)
    job = write_job(
        tmp_path,
        prompts,
        algorithm={"groupSize": 2, "rolloutBatchSize": 2, "filter": "os_ext:even"},
        rollout={"maxNewTokens": 4, "overSampling": 3},
    )
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}:{ROOT / 'rollout_image'}"}
    engines, buffer = _start(procs, tmp_path, job, **env)
    result = {}
    t = threading.Thread(target=lambda: result.update(b=_batch(buffer, 0)))
    t.start()
    stats = _release(engines, buffer, 5)
    assert stats["inflight_groups"] == 2 + 3, stats  # rolloutBatchSize + overSampling
    t.join(timeout=150)
    batch = result["b"]
    # the filter dropped the odd prompts; the batch is two of the three it kept among the
    # five drawn at once (0-4): the first to be ready, earliest-drawn first
    served = [g["prompt_index"] for g in batch["groups"]]
    assert len(served) == 2 and served == sorted(served) and set(served) <= {0, 2, 4}, served

    # every group drawn settles: before the batch was served an odd one is dropped by the
    # filter and an even one accepted (the third waits for the next step); one finishing
    # after it is overtaken by the served step (a sync run: drawn again once version 1 is
    # live), odd or even
    def settled():
        stats = httpx.get(f"{buffer}/stats", headers=auth(), timeout=5).json()
        overtaken = _metric(buffer, "rlpost_samples_total", outcome="overtaken") // 2
        odd = stats["dropped_groups"].get("odd", 0)
        return stats, odd + stats["accepted_groups"] + overtaken

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats, total = settled()
        if total >= 5:
            break
        time.sleep(0.1)
    assert total == 5 and set(stats["dropped_groups"]) <= {"odd"}, stats
    records = httpx.get(f"{buffer}/records", headers=auth(), timeout=5).json()
    assert [g["prompt_index"] for g in records["steps"][0]["groups"]] == served
