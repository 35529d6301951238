"""Load time and generation speed of the hf backend with the embedded default model (SmolLM2-135M-Instruct).

Measures, in one run:

* first load (GGUF de-quantization + safetensors conversion into a fresh temporary ``AGENTGYM_CACHE``) vs a
  load from the cached safetensors;
* generated tokens/s of ``HFBackend.generate`` against transformers' own ``model.generate`` on the same model,
  the same chat-templated prompts and the same settings, at several batch sizes. Greedy decoding makes both
  sides produce the same tokens, so they do the same work; sampling (temperature 1) is timed as well.

Usage::

    .venv/bin/python benchmarks/bench_llm_load.py                     # batches 1, 16, 64
    .venv/bin/python benchmarks/bench_llm_load.py --batches 1 16 --skip-convert
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from policies.llm.base import SamplingParams
from policies.llm.hf import HFBackend

SUBJECTS = ["the moon", "rain", "a bicycle", "coffee", "the ocean", "a library", "winter", "a volcano"]
ASKS = ["Describe {} in one sentence.", "Write a short poem about {}.", "Give two facts about {}.",
        "Why do people like {}?", "What colour is {}?", "Explain {} to a child.", "Tell a joke about {}.",
        "List three words related to {}."]

LOAD_SNIPPET = """
import time, sys
t = time.perf_counter()
from policies.llm.hf import HFBackend
HFBackend("smollm2")
print(time.perf_counter() - t)
"""


def timed_load(cache: str) -> float:
    """Seconds for a fresh process to import the backend and build ``HFBackend("smollm2")``."""
    env = {**os.environ, "AGENTGYM_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", LOAD_SNIPPET], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def chat_prompts(tokenizer, n: int) -> list[list[int]]:
    prompts = []
    for i in range(n):
        question = ASKS[i % len(ASKS)].format(SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=False)
        prompts.append(tokenizer.encode(text, add_special_tokens=False))
    return prompts


def ours(backend: HFBackend, prompts: list[list[int]], max_new: int, temperature: float) -> tuple[int, float]:
    start = time.perf_counter()
    gens = backend.generate(prompts, SamplingParams(max_new_tokens=max_new, temperature=temperature, seed=0))
    return sum(len(g.token_ids) for g in gens), time.perf_counter() - start


def theirs(backend: HFBackend, prompts: list[list[int]], max_new: int, temperature: float) -> tuple[int, float]:
    """transformers' ``generate`` with left padding; counts tokens up to and including each row's EOS."""
    tok, model = backend.tokenizer, backend.model
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature else {
        "do_sample": False}
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                             pad_token_id=tok.pad_token_id, **sampling)
    elapsed = time.perf_counter() - start
    count = 0
    for row in out[:, width:].tolist():
        eos = [i for i, t in enumerate(row) if t in backend.eos_token_ids]
        count += eos[0] + 1 if eos else len(row)
    return count, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per setting; the best is kept")
    parser.add_argument("--skip-convert", action="store_true", help="skip the first-load (conversion) timing")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus")

    if not args.skip_convert:
        with tempfile.TemporaryDirectory() as cache:
            first = timed_load(cache)
            cached = min(timed_load(cache) for _ in range(2))
        print(f"load: first (GGUF conversion) {first:.1f} s, cached safetensors {cached:.1f} s "
              f"({first / cached:.1f}x faster); both include importing torch/transformers in a fresh process")

    start = time.perf_counter()
    backend = HFBackend("smollm2")
    print(f"load: HFBackend('smollm2') from the cache, torch/transformers already imported: "
          f"{time.perf_counter() - start:.1f} s")
    # The cross-turn prefix cache would let our side skip the prefill of prompts it saw in an earlier repeat;
    # off, both sides prefill every prompt and the comparison is of the decoding loops alone.
    backend.prefix_cache = None
    prompts = chat_prompts(backend.tokenizer, max(args.batches))
    ours(backend, prompts[:2], 4, 1.0)  # warm up kernels and allocator
    theirs(backend, prompts[:2], 4, 1.0)
    print("| batch | decoding | ours tok/s | transformers generate tok/s | ratio (ours / theirs) | same tokens |")
    print("|---:|---|---:|---:|---:|---|")
    for batch in args.batches:
        for temperature in (0.0, 1.0):
            # Alternate the two sides and keep each one's best run: the machine may be shared, and the best of
            # interleaved runs is the least disturbed estimate of each.
            best_ours, best_theirs = (0, float("inf")), (0, float("inf"))
            for _ in range(args.repeats):
                run = ours(backend, prompts[:batch], args.max_new_tokens, temperature)
                best_ours = min(best_ours, run, key=lambda r: r[1] / max(r[0], 1))
                run = theirs(backend, prompts[:batch], args.max_new_tokens, temperature)
                best_theirs = min(best_theirs, run, key=lambda r: r[1] / max(r[0], 1))
            (n_ours, t_ours), (n_theirs, t_theirs) = best_ours, best_theirs
            same = "yes" if n_ours == n_theirs else f"{n_ours} vs {n_theirs}"
            mode = "greedy" if temperature == 0 else "sample T=1"
            print(f"| {batch} | {mode} | {n_ours / t_ours:.1f} | {n_theirs / t_theirs:.1f} | "
                  f"{(n_ours / t_ours) / (n_theirs / t_theirs):.2f} | {same if temperature == 0 else 'n/a'} |",
                  flush=True)


if __name__ == "__main__":
    main()
