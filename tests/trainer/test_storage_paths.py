"""Where the job's files are (rlpost.storage) and where a restarted trainer begins
(rlpost_trainer.resume): one rule for every role, in a cluster and in `rlpost run`."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from rlpost_rollout import config as rollout_config
from rlpost_trainer import checkpoint
from rlpost_trainer.loop import checkpoint_root
from rlpost_trainer.loop import load_job as trainer_load_job
from rlpost_trainer.resume import resume_point

from rlpost.api import RLPostTrainJob, RLPostTrainJobSpec
from rlpost.storage import (
    checkpoint_dir,
    cluster_state_dir,
    resolve_spec_paths,
    under_mount,
)


def spec(**kw) -> RLPostTrainJobSpec:
    base = {"model": {"config": {}, "tokenizer": "char:ab"}, "data": {"prompts": "p.jsonl"}}
    base.update(kw)
    return RLPostTrainJobSpec.model_validate(base)


def test_relative_paths_go_under_their_mount_absolute_ones_stay():
    assert under_mount("a/b.jsonl", "/data") == "/data/a/b.jsonl"
    assert under_mount("/abs/b.jsonl", "/data") == "/abs/b.jsonl"
    s = resolve_spec_paths(
        spec(
            model={"path": "qwen", "tokenizer": "tok", "pvc": "models"},
            data={"prompts": "sets/p.jsonl", "pvc": "datasets"},
        )
    )
    assert (s.model.path, s.model.tokenizer) == ("/models/qwen", "/models/tok")
    assert s.data.prompts == "/data/sets/p.jsonl"
    s = resolve_spec_paths(
        spec(model={"path": "/w/qwen", "pvc": "models"}, data={"prompts": "/d/p.jsonl", "pvc": "x"})
    )
    assert (s.model.path, s.data.prompts) == ("/w/qwen", "/d/p.jsonl")
    # no PVC: nothing is mounted, the path is used as written (rlpost run made it absolute)
    s = resolve_spec_paths(spec(model={"path": "qwen", "tokenizer": "char:ab"}))
    assert (s.model.path, s.model.tokenizer, s.data.prompts) == ("qwen", "char:ab", "p.jsonl")


def test_trainer_and_buffer_read_the_same_resolved_paths(tmp_path, monkeypatch):
    doc = {
        "metadata": {"name": "j"},
        "spec": {
            "model": {"config": {}, "tokenizer": "char:ab"},
            "data": {"prompts": "copy/prompts.jsonl", "pvc": "datasets"},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("RLPOST_CONFIG", str(path))
    trainer = trainer_load_job()
    buffer = rollout_config.load_job()
    assert trainer.spec.data.prompts == buffer.spec.data.prompts == "/data/copy/prompts.jsonl"


def test_checkpoint_dir_in_a_cluster_is_inside_the_state_volume():
    assert cluster_state_dir("j", spec()) == "/state"
    assert cluster_state_dir("j", spec(checkpoint={"path": "/runs/x"})) == "/state/runs/x"
    assert cluster_state_dir("j", spec(checkpoint={"pvc": "c"})) == "/checkpoints/j"
    assert cluster_state_dir("j", spec(checkpoint={"pvc": "c", "path": "r"})) == "/checkpoints/r/j"
    # the operator's RLPOST_CHECKPOINT_DIR wins over checkpoint.path (the raw path was the bug)
    s = spec(checkpoint={"path": "/runs/x"})
    env = {"RLPOST_CHECKPOINT_DIR": "/state/runs/x/trainer/checkpoints", "RLPOST_STATE_DIR": "/s"}
    assert checkpoint_dir(s, env) == Path("/state/runs/x/trainer/checkpoints")
    # rlpost run: checkpoint.path is a local directory, else the run's state dir
    assert checkpoint_dir(s, {"RLPOST_STATE_DIR": "/s"}) == Path("/runs/x")
    assert checkpoint_dir(spec(), {"RLPOST_STATE_DIR": "/s"}) == Path("/s/checkpoints")
    job = RLPostTrainJob.model_validate({"spec": spec().wire()})
    assert isinstance(checkpoint_root(job), Path)


def make_checkpoints(root: Path, steps: list[int]) -> None:
    for k in steps:
        checkpoint.save(root, k, {"w": k}, cursor=k * 10)


def test_resume_step_falls_back_to_an_existing_checkpoint(tmp_path):
    root = tmp_path / "ckpt"
    assert resume_point(root, None) == (0, None)  # nothing yet: a fresh start
    step, why = resume_point(root, 20)
    assert step == 0 and "no checkpoint at or before step 20" in why
    make_checkpoints(root, [10, 20])
    (root / "step-00000030").mkdir()  # incomplete: no state.pt
    assert resume_point(root, None) == (20, None)
    assert resume_point(root, 20) == (20, None)
    step, why = resume_point(root, 30)
    assert step == 20 and "step-00000030 does not exist" in why and "step 20" in why
    step, why = resume_point(root, 15)
    assert step == 10 and why
    assert checkpoint.load(root, step)["cursor"] == 100


def test_trainer_resume_step_logs_the_fallback_and_rewinds_buffer(tmp_path, monkeypatch, caplog):
    """Trainer.resume_step with RLPOST_RESUME_STEP naming a checkpoint that is gone."""
    from rlpost_trainer.loop import Trainer

    calls = []

    class Buffer:
        def resume(self, step, cursor):
            calls.append((step, cursor))

    class Ranks:
        is_main = True

    t = Trainer.__new__(Trainer)  # only what resume_step uses
    t.ckpt_root, t.buffer, t.ranks, t.ctrl = tmp_path / "ckpt", Buffer(), Ranks(), None
    monkeypatch.setenv("RLPOST_RESUME_STEP", "40")
    with caplog.at_level(logging.WARNING, logger="rlpost_trainer"):
        assert t.resume_step() == 0
    assert calls == [(0, 0)]  # the buffer had applied step 40 at its start: back to the top
    assert "starting fresh" in caplog.text
    make_checkpoints(t.ckpt_root, [30])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlpost_trainer"):
        assert t.resume_step() == 30
    assert "resuming from the newest checkpoint at or before it, step 30" in caplog.text
    assert calls == [(0, 0)]  # restore() tells the buffer about step 30


@pytest.mark.parametrize("bad", ["no-port", "host:"])
def test_bad_engine_service_is_refused(bad):
    from rlpost_trainer.engines import dns_source

    with pytest.raises(ValueError):
        dns_source(bad)
