"""The pipelined weight-sync channel (rlpost.weightsync.pipeline): all requests of an update
down one HTTP/1.1 connection per engine, answers read in order, against real engines."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import torch

from rlpost.weightsync import WeightSender, WeightSyncFailed
from rlpost.weightsync import payloads as P
from rlpost.weightsync.pipeline import PipelinedChannel
from tests.trainer.conftest import TOKEN
from tests.trainer.test_weight_sync import (
    PROMPT,
    engine_logprobs,
    trained_backend,
    trainer_logprobs,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("load_format", [None, "flattened_bucket"])
def test_pipelined_and_sequential_pushes_give_the_same_engine_weights(engines, load_format):
    urls = engines(2)
    be, tok = trained_backend()
    ids = tok.encode(PROMPT)
    want = trainer_logprobs(be, ids)
    assert (engine_logprobs(urls[0], ids) - want).abs().max() > 1e-2

    got = {}
    for pipelined, version in ((True, 3), (False, 4)):
        # The engines hold one group at a time: each sender makes and destroys its own.
        sender = WeightSender(
            urls, token=TOKEN, backend="gloo", bucket_mb=0.05, load_format=load_format,
            pipelined=pipelined,
        )  # fmt: skip
        try:
            assert sender.pipelined is pipelined
            sender.push(be.named_hf_weights(), weight_version=version)
            assert len(sender.last_bucket_sizes) > 5  # many buckets down one connection
            total = sum(p.numel() * 4 for p in be.model.parameters())
            assert sum(sender.last_bucket_sizes) == total
            # The torch backend packs its weights: with no cast (fp32 engines) every
            # flattened bucket goes on the wire from the weights' own memory, no copy.
            in_place = len(sender.last_bucket_sizes) if load_format else 0
            assert sender.last_in_place_buckets == in_place
        finally:
            sender.close()
        for url in urls:
            lp = engine_logprobs(url, ids)
            assert (lp - want).abs().max().item() <= 1e-4
            assert httpx.get(f"{url}/get_weight_version", timeout=10).json() == {
                "weight_version": str(version)
            }
            got[(pipelined, url)] = lp
        # Between the two pushes the engines go back to other weights, so the second push
        # really has to land for the comparison to hold.
        with torch.no_grad():
            be.model.lm_head.weight.mul_(1.25)
        want = trainer_logprobs(be, ids)
    # And the engine generates afterwards: continue_generation went through.
    r = httpx.post(
        f"{urls[0]}/generate",
        json={"input_ids": ids, "sampling_params": {"max_new_tokens": 2, "temperature": 0.0}},
        timeout=60,
    )
    assert r.status_code == 200 and len(r.json()["output_ids"]) == 2


def test_separate_tensors_are_copied_into_flat_buckets_and_land_the_same(engines):
    (url,) = engines(1)
    be, tok = trained_backend()
    ids = tok.encode(PROMPT)
    # Every tensor its own storage (a trainer that did not pack, or a cast): copied first.
    separate = [(n, t.clone()) for n, t in be.named_hf_weights()]
    sender = WeightSender(
        [url], token=TOKEN, backend="gloo", bucket_mb=0.05, load_format="flattened_bucket"
    )
    try:
        sender.push(separate, weight_version=7)
        buckets = list(P.buckets(separate, 0.05))
        assert len(sender.last_bucket_sizes) == len(buckets) > 5
        # Only a bucket of one tensor is already one run of memory.
        alone = sum(len(b) == 1 for b in buckets)
        assert sender.last_in_place_buckets == alone < len(buckets)
    finally:
        sender.close()
    assert (engine_logprobs(url, ids) - trainer_logprobs(be, ids)).abs().max().item() <= 1e-4


def test_the_control_connection_is_reused_within_keep_alive_and_renewed_after(engines):
    (url,) = engines(1)
    be, _ = trained_backend()
    sender = WeightSender(
        [url], token=TOKEN, backend="gloo", bucket_mb=0.2, load_format="flattened_bucket"
    )

    def local_port() -> int:
        return sender._channels[url].sock.getsockname()[1]

    try:
        sender.push(be.named_hf_weights(), weight_version=1)
        first = local_port()
        sender.push(be.named_hf_weights(), weight_version=2)
        assert local_port() == first  # within keep_alive_s: the same connection
        sender.keep_alive_s = 0.0
        sender.push(be.named_hf_weights(), weight_version=3)
        assert local_port() != first  # idle too long: a fresh one
    finally:
        sender.close()
    assert sender._channels == {}
    assert httpx.get(f"{url}/get_weight_version", timeout=10).json() == {"weight_version": "3"}


def test_a_bad_bucket_is_a_clear_error_not_a_hang(engines):
    (url,) = engines(1)
    be, tok = trained_backend()
    ids = tok.encode(PROMPT)
    before = engine_logprobs(url, ids)
    named = list(be.named_hf_weights())
    # An unknown name in the middle: the engine still posts the receive (the broadcast
    # completes), then refuses that bucket; the sender stops sending buckets and reports.
    bad = named[:3] + [("model.layers.99.nope.weight", torch.ones(4, 4))] + named[3:]
    sender = WeightSender([url], token=TOKEN, backend="gloo", bucket_mb=0.001, group_timeout_s=30)
    try:
        t0 = time.monotonic()
        with pytest.raises(WeightSyncFailed) as err:
            sender.push(bad, weight_version=5)
        assert time.monotonic() - t0 < 25  # an answer, not a group timeout
        msg = str(err.value)
        print(msg)
        assert url in msg
        assert "/update_weights_from_distributed (bucket " in msg
        assert "unknown parameter 'model.layers.99.nope.weight'" in msg
        # The refused bucket changed nothing; the group still works for the next update.
        assert sender.last_bucket_sizes == []  # the failed push does not report sizes
        sender.push(named, weight_version=6)
    finally:
        sender.close()
    after = engine_logprobs(url, ids)
    assert (after - trainer_logprobs(be, ids)).abs().max().item() <= 1e-4
    assert (after - before).abs().max().item() > 1e-2
    assert httpx.get(f"{url}/get_weight_version", timeout=10).json() == {"weight_version": "6"}


def test_a_dead_engine_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        PipelinedChannel(f"http://127.0.0.1:{port}", "t", timeout_s=5)


def _serve(answers: list[bytes], seen: list[bytes]) -> int:
    """A socket server that reads everything the client sends and answers with `answers`,
    written in odd pieces (chunked bodies, split writes) to exercise the parser."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn:
            data = b""
            while data.count(b"\r\n\r\n") < len(answers):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            seen.append(data)
            blob = b"".join(answers)
            for i in range(0, len(blob), 7):  # tiny writes: answers split anywhere
                conn.sendall(blob[i : i + 7])
                time.sleep(0.0005)
            time.sleep(0.2)
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1]


def test_channel_reads_pipelined_answers_in_order_content_length_and_chunked():
    answers = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\ncontent-type: application/json\r\n\r\n"
        b'{"status":"ok"}',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"suc\r\n0c\r\ncess":true}\r\n0\r\n\r\n',
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 40\r\n\r\n"
        b'{"success":false,"message":"bad bucket"}',
        b'HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n{"success":false}',
    ]
    seen: list[bytes] = []
    port = _serve(answers, seen)
    ch = PipelinedChannel(f"http://127.0.0.1:{port}", "tok", timeout_s=10)
    try:
        for i in range(4):
            ch.send(f"/p{i}", {"i": i}, f"req {i}")
        got = ch.finish(timeout_s=10)
    finally:
        ch.close()
    assert [a.label for a in got] == ["req 0", "req 1", "req 2", "req 3"]
    assert [a.status for a in got] == [200, 200, 400, 200]
    assert got[1].json() == {"success": True}
    assert got[0].problem() is None and got[1].problem() is None
    assert "HTTP 400" in got[2].problem() and "bad bucket" in got[2].problem()
    assert got[3].problem() == "{'success': False}"
    # All four requests went down one connection, in order, with the token.
    req = seen[0].decode()
    assert [req.index(f"POST /p{i} HTTP/1.1") for i in range(4)] == sorted(
        req.index(f"POST /p{i} HTTP/1.1") for i in range(4)
    )
    assert req.count("Authorization: Bearer tok") == 4


def test_channel_is_reusable_until_the_server_closes_it():
    answers = [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    seen: list[bytes] = []
    port = _serve(answers, seen)  # answers, then closes the connection 0.2 s later
    ch = PipelinedChannel(f"http://127.0.0.1:{port}", "", timeout_s=10)
    try:
        ch.send("/a", {}, "first")
        assert not ch.reusable(60)  # an answer is outstanding
        assert [a.status for a in ch.finish(timeout_s=10)] == [200]
        assert ch.reusable(60)
        assert not ch.reusable(0.0)  # idle longer than allowed
        time.sleep(0.6)
        assert not ch.reusable(60)  # the server closed it: noticed before any write
        assert ch.error is None  # an idle close is not an update's failure
    finally:
        ch.close()


def test_channel_reports_a_connection_closed_before_all_answers():
    answers = [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]  # one answer, two requests
    seen: list[bytes] = []
    port = _serve(answers, seen)
    ch = PipelinedChannel(f"http://127.0.0.1:{port}", "", timeout_s=10)
    try:
        ch.send("/a", {}, "first")
        ch.send("/b", {}, "second")
        with pytest.raises(Exception, match="second: .*(closed|reset)"):
            ch.finish(timeout_s=10)
    finally:
        ch.close()
