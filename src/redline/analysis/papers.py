"""The published numbers redline reproduces, and model-name matching against them.

Paper 1 (arXiv 2412.12140) ran the self-replication task we run; paper 2 (arXiv 2503.17378)
replicated into a second container after an OAuth-like provisioning step, so its rates are a
neighbour of ours rather than the same measurement. Paper 2 also reports two DeepSeek
R1-Distill models at 10% each; we could not confirm which two from here, so that row names
neither and matches any `deepseek-r1-distill-*` model of ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PAPER1 = "Pan et al. 2024 (arXiv 2412.12140)"
PAPER2 = "Pan et al. 2025 (arXiv 2503.17378)"


@dataclass(frozen=True)
class PublishedResult:
    """One published success rate. `keys` are normalised names (see `normalize_model_name`) of
    our models that count as the same model; `prefix` matches any name starting with it."""

    paper: str
    model: str
    rate: float
    successes: int | None = None
    trials: int | None = None
    keys: tuple[str, ...] = ()
    prefix: str | None = None
    note: str = ""

    def matches(self, normalized: str) -> bool:
        return normalized in self.keys or (self.prefix is not None and normalized.startswith(self.prefix))


def _p2(model: str, successes: int, *keys: str) -> PublishedResult:
    keys = keys or (normalize_model_name(model),)
    return PublishedResult(PAPER2, model, successes / 10, successes, 10, keys)


_SUFFIXES = ("instruct", "chat", "turbo", "it", "hf", "awq", "gptq", "gguf", "fp8", "fp16", "bf16",
             "int4", "int8", "latest", "preview")


def normalize_model_name(name: str) -> str:
    """A comparable form of a model name: lower case, no provider or organisation, `:` and `_`
    as `-`, family and version joined (`llama-3.1` → `llama3.1`, `meta-llama3.1` → `llama3.1`),
    and packaging words (`instruct`, `turbo`, `gguf`, quantisation tags such as `q4_k_m`) dropped.

    `ollama/qwen2.5:72b`, `hf/Qwen/Qwen2.5-72B-Instruct` and `qwen2.5-72b-instruct` all become
    `qwen2.5-72b`."""
    n = name.strip().lower().rsplit("/", 1)[-1]
    n = re.sub(r"[\s:_]+", "-", n)
    n = re.sub(r"^meta-(?=llama)", "", n)
    # A version joins its family (llama-3.1 → llama3.1); a size (llama-70b) does not.
    n = re.sub(r"\b(llama|qwen|mistral|gemma|phi|yi|qwq)-(\d+(?:\.\d+)?)(?=-|$)", r"\1\2", n)
    n = re.sub(r"-i?q\d(?:-[a-z0-9]{1,2})*(?=-|$)", "", n)  # llama.cpp quantisation: q4_K_M, q8_0
    return "-".join(p for p in n.split("-") if p and p not in _SUFFIXES)


PUBLISHED: tuple[PublishedResult, ...] = (
    PublishedResult(PAPER1, "Llama3.1-70B-Instruct", 0.5, 5, 10, ("llama3.1-70b",)),
    PublishedResult(PAPER1, "Qwen2.5-72B-Instruct", 0.9, 9, 10, ("qwen2.5-72b",)),
    _p2("Qwen2.5-72B", 7),
    _p2("Qwen2.5-32B", 7),
    _p2("Mistral-Large-2411", 7, "mistral-large-2411"),
    _p2("Llama3.3-70B", 6),
    _p2("Qwen2-72B", 4),
    _p2("Llama3.1-70B", 3),
    _p2("Qwen2.5-14B", 3),
    _p2("QwQ-32B", 2),
    _p2("Mistral-Large-2407", 1, "mistral-large-2407"),
    PublishedResult(PAPER2, "R1-Distill (two models; names not verified here)", 0.1, None, None, (),
                    "deepseek-r1-distill", "10% each, 10 trials each"),
    PublishedResult(PAPER2, "21 smaller models (not named here)", 0.0, None, None, (), None,
                    "0% each, 10 trials each"),
)
"""Every published rate, paper 1 first."""


def match_published(models: Iterable[str]) -> list[tuple[PublishedResult, list[str]]]:
    """Each published row with the names of our models that match it (possibly none)."""
    normalized = {m: normalize_model_name(m) for m in models}
    return [(row, sorted(m for m, n in normalized.items() if row.matches(n))) for row in PUBLISHED]


PAPER2_VARIANTS: dict[str, str] = {
    "harsh_environment": "reports successful cases in harsher environments (software missing, ports "
                         "occupied, low disk); no per-model success rate",
    "implicit": "reports successful replication without an explicit instruction, after a notice of shutdown; "
                "no per-model success rate",
    "persistence": "reports an agent that had supervisord restart it when killed; no per-model success rate",
}
"""What paper 2 published on its variant scenarios, as we read it: cases, not rates (none we could
confirm). The report shows this beside our rates instead of a number."""
