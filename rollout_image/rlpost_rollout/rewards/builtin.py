"""Rule rewards: exact match, and math answers graded by Math-Verify (Hugging Face).

`math_answer` parses the label (plain or LaTeX: "7/2", "\\frac{7}{2}", "x^2+1") and the
response (its \\boxed{} answer, else its last expression; nested braces are fine) with
`math_verify.parse` and compares them symbolically with `math_verify.verify` (3.5 equals 7/2,
1,000 equals 1000). Math-Verify bounds its own time with SIGALRM, which works only in a
process's main thread, so the buffer runs it in a worker process (`math_answer_async`); a
label that is not a math answer is an error (the sample fails, visibly), not a zero.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5


def exact_match(prompt: str, response: str, label: Any) -> float:
    return 1.0 if response.strip() == str(label).strip() else 0.0


def parse_label(label: Any) -> list:
    from math_verify import parse

    text = str(label).strip()
    gold = parse(text, parsing_timeout=PARSE_TIMEOUT_S)
    if not gold and any(c in text for c in "\\^_{}"):  # LaTeX without delimiters: x^2+1
        gold = parse(f"${text}$", parsing_timeout=PARSE_TIMEOUT_S)
    if not gold:
        raise ValueError(f"label {text!r} is not a math answer Math-Verify can parse")
    return gold


def math_answer(prompt: str, response: str, label: Any) -> float:
    """1.0 if the response's final answer equals the label mathematically, else 0.0. Call it
    in a main thread (Math-Verify's timeouts use SIGALRM)."""
    from math_verify import parse, verify

    gold = parse_label(label)
    answer = parse(response, parsing_timeout=PARSE_TIMEOUT_S)
    if not answer:
        return 0.0
    return 1.0 if verify(gold, answer, timeout_seconds=VERIFY_TIMEOUT_S) else 0.0


_pool: ProcessPoolExecutor | None = None


def _executor() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        # spawn: the buffer has threads (uvicorn, httpx); a fork of them is not safe.
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return _pool


async def math_answer_async(prompt: str, response: str, label: Any) -> float:
    """`math_answer` in a worker process's main thread (so its timeouts work)."""
    global _pool
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_executor(), math_answer, prompt, response, label)
    except BrokenProcessPool as exc:
        _pool = None  # the next call starts a fresh worker
        raise RuntimeError(f"the Math-Verify worker died: {exc}") from exc
