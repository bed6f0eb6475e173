"""Rule rewards: exact match, and a math answer checker (\\boxed{} or the last number)."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# 1,000 / 3.5 / 7/2 / -4 (thousands separators only in groups of three)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?")


def exact_match(prompt: str, response: str, label: Any) -> float:
    return 1.0 if response.strip() == str(label).strip() else 0.0


def _as_number(text: str) -> Fraction | None:
    text = text.strip().replace(",", "")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(response: str) -> str | None:
    """The final answer: the last \\boxed{...}, else the last number in the text."""
    boxed = _BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def math_answer(prompt: str, response: str, label: Any) -> float:
    """1.0 if the final answer equals the label numerically (or textually if not numbers)."""
    answer = extract_answer(response)
    if answer is None:
        return 0.0
    want, got = _as_number(str(label)), _as_number(answer)
    if want is not None and got is not None:
        return 1.0 if want == got else 0.0
    return 1.0 if answer.strip() == str(label).strip() else 0.0
