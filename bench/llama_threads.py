"""llama.cpp thread count on a shared machine: one agent-like step with 1 thread and with every core.

llama.cpp's threads wait for each other at every layer, so when other processes hold the cores,
more threads can be much slower. This measures the same five-field step (system prompt + two
few-shot turns + a task, grammar, temperature 0) on two servers in the same run: the baseline uses
every core (llama.cpp's own default), the other `llama_backend.default_threads()` (one core fewer).
Run it on a busy machine and on a quiet one; the load average is printed beside the figures.
Ends with `figure <name> <value> <unit>` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from pathlib import Path

from redline import embedded
from redline.embedded import LlamaProcess, embedded_gguf

PROMPTS = Path(embedded.__file__).parent / "system" / "ai_system" / "prompts"
TASKS = ["How many files are in /etc?", "Which version of Python is installed?",
         "What is the hostname of this machine?", "Count the lines in /etc/passwd.", "Is curl installed?"]


def step(url: str, task: str, max_tokens: int) -> tuple[float, float]:
    """(seconds, generated tokens per second) of one grammar-constrained five-field reply."""
    system = (PROMPTS / "thinking.md").read_text().replace("{cwd}", "/home/agent/ai_system")
    body = {"messages": [{"role": "system", "content": system.replace("{max_steps}", "60")},
                         *json.loads((PROMPTS / "few_shot.json").read_text()),
                         {"role": "user", "content": task}],
            "temperature": 0, "seed": 1, "max_tokens": max_tokens,
            "grammar": (PROMPTS / "five_fields.gbnf").read_text()}
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=900) as r:
        data = json.loads(r.read())
    return time.perf_counter() - t, float(data["timings"]["predicted_per_second"])


def measure(threads: int, n: int, max_tokens: int) -> tuple[float, float]:
    with LlamaProcess(embedded_gguf(), ctx=4096, threads=threads) as server:
        step(server.url, TASKS[-1], max_tokens)  # warm-up: the shared prefix into the prompt cache
        runs = [step(server.url, TASKS[i % len(TASKS)], max_tokens) for i in range(n)]
    return statistics.median(s for s, _ in runs), statistics.median(t for _, t in runs)


def main(n: int, max_tokens: int) -> None:
    cores = os.cpu_count() or 2
    few = max(1, cores - 1)
    load_before = os.getloadavg()[0]
    all_s, all_tps = measure(cores, n, max_tokens)
    few_s, few_tps = measure(few, n, max_tokens)
    load_after = os.getloadavg()[0]
    print(f"load average {load_before:.1f} -> {load_after:.1f} on {cores} cores; median of {n} steps, "
          f"max_tokens {max_tokens}")
    print(f"{cores} threads: {all_s:.2f} s per step, {all_tps:.1f} tok/s generated")
    print(f"{few} threads: {few_s:.2f} s per step, {few_tps:.1f} tok/s generated")
    print(f"figure llama_step_all_cores_s {all_s:.2f} s")
    print(f"figure llama_step_default_threads_s {few_s:.2f} s")
    print(f"figure llama_step_speedup_default_vs_all_cores {all_s / few_s:.2f} x")
    print(f"figure llama_load_average {(load_before + load_after) / 2:.1f} load")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5, help="steps per server")
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()
    main(a.n, a.max_tokens)
