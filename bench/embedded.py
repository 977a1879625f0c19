"""Embedded model speed: SmolLM2-135M under llama.cpp (xllamacpp), one agent-like step.

An agent-like step is one five-field reply of the thinking scaffold: system prompt + the two
few-shot turns + a task, temperature 0, max_tokens 256, constrained by the five-field grammar
(without it the model rarely produces the format). Each repetition uses another task, so the
shared prefix (system prompt + few-shot) comes from llama.cpp's prompt cache, as in a real
conversation. The baseline, measured in the same run on the same server, is a plain short
completion ("Say hello.", max_tokens 16). Ends with `figure <name> <value> <unit>` lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path

from redline import embedded
from redline.embedded import LlamaProcess, embedded_gguf, xllamacpp_dir

PROMPTS = Path(embedded.__file__).parent / "system" / "ai_system" / "prompts"
FIELDS = ["explanation", "gaps", "findings", "plan", "action"]
TASKS = [
    "How many files are in /etc?", "What is the current date and time?",
    "Which version of Python is installed?", "How much memory does this machine have?",
    "List the users defined on this system.", "What is the hostname of this machine?",
    "Count the lines in /etc/passwd.", "Which processes are running?",
    "What is the largest file in /usr/bin?", "Is curl installed?",
]


def post(url: str, body: dict) -> tuple[dict, float]:
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        data = json.loads(r.read())
    return data, time.perf_counter() - t


def five_fields(text: str) -> bool:
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and list(obj) == FIELDS


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(n: int, max_tokens: int) -> None:
    gguf = embedded_gguf()
    system = (PROMPTS / "thinking.md").read_text()
    system = system.replace("{cwd}", "/home/agent/ai_system").replace("{max_steps}", "60")
    shots = json.loads((PROMPTS / "few_shot.json").read_text())
    grammar = (PROMPTS / "five_fields.gbnf").read_text()

    starts = []
    for _ in range(3):
        t = time.perf_counter()
        with LlamaProcess(gguf):
            starts.append(time.perf_counter() - t)

    with LlamaProcess(gguf) as server:
        def step(task: str, **extra: object) -> tuple[dict, float]:
            return post(server.url, {"messages": [{"role": "system", "content": system}, *shots,
                                                  {"role": "user", "content": task}],
                                     "temperature": 0, "seed": 1, "max_tokens": max_tokens,
                                     "grammar": grammar, **extra})

        def short() -> tuple[dict, float]:
            return post(server.url, {"messages": [{"role": "user", "content": "Say hello."}],
                                     "temperature": 0, "seed": 1, "max_tokens": 16})

        step(TASKS[-1])  # warm-up: fills the prompt cache with the shared prefix
        short()
        steps = [step(TASKS[i % len(TASKS)]) for i in range(n)]
        shorts = [short() for _ in range(n)]
        cold = [step(TASKS[i % len(TASKS)], cache_prompt=False) for i in range(3)]
        rss = rss_mb(server.pid or 0)

    step_s = statistics.median(s for _, s in steps)
    short_s = statistics.median(s for _, s in shorts)
    gen_tps = statistics.median(d["timings"]["predicted_per_second"] for d, _ in steps)
    prompt_tps = statistics.median(d["timings"]["prompt_per_second"] for d, _ in cold)
    prompt_tokens = statistics.median(d["usage"]["prompt_tokens"] for d, _ in steps)
    out_tokens = statistics.median(d["usage"]["completion_tokens"] for d, _ in steps)
    parsed = sum(five_fields(d["choices"][0]["message"]["content"]) for d, _ in steps)
    cold_s = statistics.median(s for _, s in cold)
    gguf_mb = gguf.stat().st_size / 1e6
    pkg_mb = dir_mb(xllamacpp_dir())

    print(f"agent-like step (grammar, {prompt_tokens:.0f} prompt tokens, median {out_tokens:.0f} out, "
          f"max_tokens {max_tokens}): median {step_s:.2f} s of {n}; five-field JSON {parsed}/{n}")
    print(f"  same step without prompt cache: {cold_s:.2f} s (median of 3)")
    print(f"plain short completion (16 tokens): median {short_s:.3f} s of {n}")
    print(f"ratio step/short: {step_s / short_s:.1f}x")
    print(f"generation {gen_tps:.0f} tok/s, prompt processing {prompt_tps:.0f} tok/s")
    print(f"server start (spawn to /health 200): median {statistics.median(starts):.2f} s; RSS {rss:.0f} MB")
    print(f"install: gguf {gguf_mb:.0f} MB + xllamacpp {pkg_mb:.0f} MB")
    print(f"figure embedded_step_s {step_s:.2f} s")
    print(f"figure embedded_step_uncached_s {cold_s:.2f} s")
    print(f"figure embedded_short_completion_s {short_s:.3f} s")
    print(f"figure embedded_step_ratio_vs_short {step_s / short_s:.1f} x")
    print(f"figure embedded_generation_tok_per_s {gen_tps:.0f} tok/s")
    print(f"figure embedded_prompt_tok_per_s {prompt_tps:.0f} tok/s")
    print(f"figure embedded_step_five_field_rate {100 * parsed / n:.0f} %")
    print(f"figure embedded_server_start_s {statistics.median(starts):.2f} s")
    print(f"figure embedded_server_rss_mb {rss:.0f} MB")
    print(f"figure embedded_install_mb {gguf_mb + pkg_mb:.0f} MB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=10, help="repetitions per measurement")
    ap.add_argument("--max-tokens", type=int, default=256)
    a = ap.parse_args()
    main(a.n, a.max_tokens)
