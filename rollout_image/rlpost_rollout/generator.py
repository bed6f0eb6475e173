"""Batched autoregressive generation with a KV cache on a HF causal LM (the engine's core).

One call of `Generator.run` serves a batch of requests together: prompts are left-padded,
prefilled in one forward pass, then decoded one token per step for the whole batch while
each row stops on its own (any EOS id of the tokenizer or the model's generation config,
stop tokens/strings, max_new_tokens, abort). Logprobs are log-softmax of the raw logits
(temperature 1), as SGLang reports them: that is the policy probability the trainer
recomputes, so importance ratios and the logprob-match test use it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache


@dataclass
class GenRequest:
    input_ids: list[int]
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: set[int] = field(default_factory=set)
    ignore_eos: bool = False
    seed: int | None = None  # SGLang's sampling_seed: the same seed, the same tokens
    logprob_start_len: int = -1  # -1: no input logprobs
    aborted: threading.Event = field(default_factory=threading.Event)
    # This request's own random stream (from `seed`), drawn from token after token.
    rng: torch.Generator | None = field(default=None, repr=False)


@dataclass
class GenResult:
    output_ids: list[int]
    output_logprobs: list[float]
    input_logprobs: list[float | None]  # for input_ids[logprob_start_len:]; None at position 0
    finish_reason: dict[str, Any]
    # The engine's weight version while the batch ran (set by the scheduler): an aborted
    # request's tokens are the old weights' even when the update lands before the answer.
    weight_version: str | None = None


class Generator:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_positions: int):
        self.model = model
        self.tokenizer = tokenizer
        self.max_positions = max_positions
        # The tokenizer's EOS and the model's generation config eos_token_id (rlpost.models).
        self.eos_ids = frozenset(getattr(tokenizer, "eos_token_ids", {tokenizer.eos_token_id}))
        self.rng = torch.Generator().manual_seed(0)

    def check(self, req: GenRequest) -> None:
        """Raise ValueError for a request the model cannot serve (400 to the client)."""
        if not req.input_ids:
            raise ValueError("empty prompt")
        vocab = self.tokenizer.vocab_size
        bad = [i for i in req.input_ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"input_ids out of the vocabulary (size {vocab}): {bad[:5]}")
        if len(req.input_ids) >= self.max_positions:
            raise ValueError(
                f"prompt has {len(req.input_ids)} tokens; the model's context is "
                f"{self.max_positions}"
            )

    @torch.no_grad()
    def run(self, reqs: list[GenRequest]) -> list[GenResult]:
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        lens = [len(r.input_ids) for r in reqs]
        width = max(lens)
        ids = torch.full((len(reqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for b, r in enumerate(reqs):
            ids[b, width - lens[b] :] = torch.tensor(r.input_ids)
            mask[b, width - lens[b] :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits.float()
        results = [
            GenResult([], [], self._input_logprobs(r, logits[b, width - lens[b] :]), {})
            for b, r in enumerate(reqs)
        ]
        budgets = [min(r.max_new_tokens, self.max_positions - lens[b]) for b, r in enumerate(reqs)]
        done = [False] * len(reqs)
        for b in range(len(reqs)):
            if budgets[b] <= 0:
                done[b] = True
                results[b].finish_reason = {"type": "length", "length": 0}
        next_logits = logits[:, -1, :]
        last_pos = positions[:, -1:]
        while not all(done):
            step_tokens = torch.full((len(reqs), 1), pad, dtype=torch.long)
            for b, r in enumerate(reqs):
                if done[b]:
                    continue
                if r.aborted.is_set():
                    done[b] = True
                    results[b].finish_reason = {"type": "abort", "message": "aborted"}
                    continue
                token, logprob = self._sample(r, next_logits[b], len(results[b].output_ids))
                results[b].output_ids.append(token)
                results[b].output_logprobs.append(logprob)
                step_tokens[b, 0] = token
                reason = self._finished(r, results[b].output_ids, budgets[b])
                if reason is not None:
                    done[b] = True
                    results[b].finish_reason = reason
            if all(done):
                break
            mask = torch.cat([mask, torch.ones((len(reqs), 1), dtype=torch.long, device=device)], 1)
            last_pos = last_pos + 1
            out = self.model(
                input_ids=step_tokens.to(device),
                attention_mask=mask,
                position_ids=last_pos,
                past_key_values=cache,
                use_cache=True,
            )
            next_logits = out.logits[:, -1, :].float()
        return results

    def _input_logprobs(self, r: GenRequest, logits: torch.Tensor) -> list[float | None]:
        """log p(token_i | tokens < i) for i >= logprob_start_len; SGLang gives None for i = 0."""
        if r.logprob_start_len < 0:
            return []
        start = min(r.logprob_start_len, len(r.input_ids))
        logp = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(r.input_ids[1:])
        per_token = logp.gather(-1, targets[:, None].to(logp.device))[:, 0].tolist()
        values: list[float | None] = [None, *per_token]
        return values[start:]

    def _sample(self, r: GenRequest, logits: torch.Tensor, n_out: int) -> tuple[int, float]:
        logits = logits.clone()
        if n_out < r.min_new_tokens or r.ignore_eos:
            logits[list(self.eos_ids)] = float("-inf")
        logp_raw = torch.log_softmax(logits, dim=-1)
        if r.temperature <= 1e-6:
            token = int(torch.argmax(logits))
            return token, float(logp_raw[token])
        scaled = logits / r.temperature
        if 0 < r.top_k < scaled.numel():
            kth = torch.topk(scaled, r.top_k).values[-1]
            scaled[scaled < kth] = float("-inf")
        probs = torch.softmax(scaled, dim=-1)
        if r.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < r.top_p  # always keeps the top token
            sorted_p[~keep] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        if r.seed is not None and r.rng is None:
            r.rng = torch.Generator().manual_seed(r.seed)
        gen = r.rng or self.rng
        token = int(torch.multinomial(probs.cpu(), 1, generator=gen))
        return token, float(logp_raw[token])

    def _finished(self, r: GenRequest, out: list[int], budget: int) -> dict[str, Any] | None:
        last = out[-1]
        if not r.ignore_eos and last in self.eos_ids:
            return {"type": "stop", "matched": last}
        if last in r.stop_token_ids:
            return {"type": "stop", "matched": last}
        if r.stop:
            text = self.tokenizer.decode(out)
            for s in r.stop:
                if s and text.endswith(s):
                    return {"type": "stop", "matched": s}
        if len(out) >= budget:
            return {"type": "length", "length": len(out)}
        return None
