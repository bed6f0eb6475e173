"""spec.eval through `rlpost run`'s LocalRun on the example: held-out greedy accuracy starts
low and ends >= 0.9, the eval fields are in steps.jsonl exactly at the interval steps (and
the last), the trainer exports rlpost_eval_reward, and the run prints eval lines and draws
them on reward_curve.png."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.loop.conftest import example_job

STEPS, INTERVAL = 100, 10


@pytest.mark.slow
def test_eval_runs_every_interval_and_tracks_learning(local_run, tmp_path, capsys):
    job = example_job(steps=STEPS, eval__interval_steps=INTERVAL)
    run = local_run(job, tmp_path / "run")
    run.quiet = False
    run.start()
    scraped: list[str] = []
    done = threading.Event()

    def scrape() -> None:  # the trainer's /metrics while it runs (it exits at the end)
        while not done.wait(1.0):
            try:
                text = httpx.get(run.urls["trainer_metrics"], timeout=5).text
            except httpx.HTTPError:
                continue
            if "rlpost_eval_reward{" in text:
                scraped.append(text)

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        result = run.follow(timeout_s=240)
    finally:
        done.set()
        thread.join(timeout=10)
    steps = result.steps
    assert len(steps) == STEPS
    evals = [r for r in steps if "eval_greedy" in r]
    assert [r["step"] + 1 for r in evals] == list(range(INTERVAL, STEPS + 1, INTERVAL))
    for r in evals:
        assert r["eval_prompts"] == 64 and r["eval_k"] == 4
        assert r["eval_weight_version"] == r["step"] + 1  # at the weights just pushed
        assert r["eval_mean_at_k"] <= r["eval_pass_at_k"]
    curve = [(r["step"] + 1, round(r["eval_greedy"], 3), round(r["eval_pass_at_k"], 3))
             for r in evals]  # fmt: skip
    eval_s = sum(r["eval_s"] for r in evals)
    seconds = [round(r["eval_s"], 1) for r in evals]
    print(f"evals (step, greedy, pass@4): {curve}; {eval_s:.1f}s {seconds} of {result.wall_s:.0f}s")
    assert evals[0]["eval_greedy"] < 0.5, curve  # starts low
    assert evals[-1]["eval_greedy"] >= 0.9, curve  # ends learned, on prompts it never saw
    assert scraped, "rlpost_eval_reward never appeared on the trainer's /metrics"
    for kind in ("greedy", "pass_at_k", "mean_at_k"):
        assert f'rlpost_eval_reward{{job="copy-first-letter",kind="{kind}"}}' in scraped[-1]
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("eval ")]
    assert len(lines) == len(evals) and "pass@4" in lines[-1], lines
    assert (tmp_path / "run" / "reward_curve.png").stat().st_size > 1000
