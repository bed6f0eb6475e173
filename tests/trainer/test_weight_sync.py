"""Weight sync through real HTTP to real reference engines, tensors by gloo broadcast."""

from __future__ import annotations

import threading

import httpx
import pytest
import torch
from rlpost_trainer.batch import TrainBatch
from rlpost_trainer.torch_backend import TorchBackend

from rlpost.api import RLPostTrainJob
from rlpost.models import build_tokenizer
from rlpost.weightsync import WeightReceiver, WeightSender, WeightSyncError, WeightSyncFailed
from rlpost.weightsync import payloads as P
from rlpost.weightsync.group import create_sync_group
from rlpost.weightsync.sender import free_port
from tests.trainer.conftest import TOKEN, job_dict

torch.set_num_threads(1)
PROMPT = "abcdefgh=abc"


def trained_backend() -> tuple[TorchBackend, object]:
    """The trainer's policy after a few steps of noise: weights differ from the engines'."""
    job = RLPostTrainJob.model_validate(job_dict(algorithm={"lr": 0.05}))
    tok = build_tokenizer(job.spec.model)
    be = TorchBackend()
    be.setup(job.spec, tok.vocab_size)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in be.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return be, tok


def trainer_logprobs(be: TorchBackend, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    tb = TrainBatch(x, torch.ones_like(x), x[:, 1:], None, None, None, None, 1, 0, 0)
    return be.compute_logprobs(tb)[0]


def engine_logprobs(url: str, ids: list[int]) -> torch.Tensor:
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
        "return_logprob": True,
        "logprob_start_len": 0,
    }
    r = httpx.post(f"{url}/generate", json=body, timeout=60)
    r.raise_for_status()
    lps = r.json()["meta_info"]["input_token_logprobs"]
    assert lps[0][0] is None  # the first token has no logprob (SGLang's convention)
    return torch.tensor([lp for lp, _, _ in lps[1:]])


def test_engine_logprobs_match_the_trainer_after_sync(engines):
    urls = engines(2)
    be, tok = trained_backend()
    ids = tok.encode(PROMPT)
    want = trainer_logprobs(be, ids)
    before = engine_logprobs(urls[0], ids)
    assert (before - want).abs().max() > 1e-2  # the engines really hold other weights

    sender = WeightSender(urls, token=TOKEN, backend="gloo", bucket_mb=0.05)
    try:
        seconds = sender.push(be.named_hf_weights(), weight_version=7)
        assert seconds > 0
        for url in urls:
            got = engine_logprobs(url, ids)
            diff = (got - want).abs().max().item()
            print(f"max |logprob diff| after sync ({url}): {diff:.2e}")
            assert diff <= 1e-4
            version = httpx.get(f"{url}/get_weight_version", timeout=10).json()
            assert str(version["weight_version"]) == "7"
        # bucketMB is respected: 0.05 MiB buckets, none over the cap (no tensor is bigger).
        cap = 0.05 * 1024 * 1024
        assert len(sender.last_bucket_sizes) > 1
        assert all(size <= cap for size in sender.last_bucket_sizes)
        total = sum(p.numel() * 4 for p in be.model.parameters())
        assert sum(sender.last_bucket_sizes) == total
        # A second update through the same group works (the group is long-lived).
        with torch.no_grad():
            be.model.lm_head.weight.mul_(1.5)
        sender.push(be.named_hf_weights(), weight_version=8)
        diff = (engine_logprobs(urls[1], ids) - trainer_logprobs(be, ids)).abs().max().item()
        assert diff <= 1e-4
    finally:
        sender.close()


def test_wrong_token_is_refused_with_a_clear_error(engines):
    (url,) = engines(1)
    sender = WeightSender([url], token="wrong", backend="gloo", group_timeout_s=5)
    try:
        with pytest.raises(WeightSyncFailed, match="401"):
            sender.push(iter([]), weight_version=1)
    finally:
        sender.close()


def join_gloo_group(receiver: WeightReceiver):
    """A 2-rank gloo weight-sync group: this thread is the trainer (rank 0)."""
    port = free_port()
    joined = threading.Thread(
        target=receiver.init_group, args=("127.0.0.1", port, 1, 2, "g", "gloo", 30)
    )
    joined.start()
    group = create_sync_group("127.0.0.1", port, 0, 2, "g", "gloo", 30)
    joined.join()
    return group


def test_buckets_keep_order_respect_the_cap_and_isolate_oversized_tensors():
    named = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([100, 100, 300, 50, 10, 10])]
    out = list(P.buckets(named, bucket_mb=800 / (1024 * 1024)))  # 800-byte cap = 200 floats
    assert [[n for n, _ in b] for b in out] == [["t0", "t1"], ["t2"], ["t3", "t4", "t5"]]
    assert [n for b in out for n, _ in b] == [n for n, _ in named]


def test_receiver_refuses_unknown_names_and_wrong_shapes_without_touching_the_model():
    be, _ = trained_backend()
    model = be.model
    receiver = WeightReceiver(model)
    group = join_gloo_group(receiver)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        for names, shapes, match in [
            (["model.norm.weight", "model.nope"], [[64], [3]], "unknown parameter 'model.nope'"),
            (["model.norm.weight", "lm_head.weight"], [[64], [3]], "shape \\[3\\]"),
        ]:
            errors = []

            def recv(names=names, shapes=shapes, errors=errors):
                try:
                    receiver.receive(names, ["float32"] * 2, shapes)
                except WeightSyncError as e:
                    errors.append(str(e))

            t = threading.Thread(target=recv)
            t.start()
            for shape in shapes:  # the sender broadcasts regardless; the receiver drains
                group.broadcast(torch.ones(shape))
            t.join(timeout=30)
            assert len(errors) == 1 and __import__("re").search(match, errors[0])
            for n, p in model.named_parameters():
                assert torch.equal(p, before[n]), f"{n} changed by a refused update"
        with pytest.raises(WeightSyncError, match="unknown dtype"):
            receiver.receive(["model.norm.weight"], ["float7"], [[64]])
        # In-process tensors (update_weights_from_tensor) follow the same rules.
        with pytest.raises(WeightSyncError, match="unknown parameter"):
            receiver.load_tensors([("model.norm.weight", torch.ones(64)), ("x", torch.ones(1))])
        assert torch.equal(model.model.norm.weight, before["model.norm.weight"])
        receiver.load_tensors([("model.norm.weight", torch.full((64,), 2.0))])
        assert torch.all(model.model.norm.weight == 2.0)
    finally:
        receiver.destroy()
        group.destroy()


def test_packed_weights_receive_flat_buckets_in_place_and_fall_back_to_a_copy():
    from rlpost.weightsync.flat import flatten
    from rlpost.weightsync.packed import pack_parameters

    be, _ = trained_backend()
    model = be.model
    assert pack_parameters(model) == 1  # one fp32 buffer on the CPU
    receiver = WeightReceiver(model)
    group = join_gloo_group(receiver)
    params = dict(model.named_parameters())
    names = list(params)[1:4]  # neighbours in the packed buffer, in its order
    where = {n: params[n].data_ptr() for n in params}

    def push(order: list[str], dtype: torch.dtype, fill: float) -> None:
        tensors = [torch.full(params[n].shape, fill, dtype=dtype) for n in order]
        wire = str(dtype).removeprefix("torch.")
        t = threading.Thread(
            target=receiver.receive,
            args=(order, [wire] * len(order), [list(x.shape) for x in tensors]),
            kwargs={"load_format": "flattened_bucket"},
        )
        t.start()
        group.broadcast(flatten(tensors, "cpu"))
        t.join(timeout=30)

    try:
        push(names, torch.float32, 1.5)
        assert receiver.direct_buckets == 1  # straight into the weights
        assert all(torch.all(params[n] == 1.5) for n in names)
        push(names[::-1], torch.float32, 2.5)  # not in memory order: staged + copied
        assert all(torch.all(params[n] == 2.5) for n in names)
        push(names, torch.bfloat16, 3.5)  # a cast: staged + copied
        assert receiver.direct_buckets == 1
        assert all(torch.all(params[n] == 3.5) for n in names)
        # Parameters never moved: generation keeps using the same (packed) storage.
        assert {n: p.data_ptr() for n, p in model.named_parameters()} == where
    finally:
        receiver.destroy()
        group.destroy()
