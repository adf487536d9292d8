"""Server benchmark (issue 10): the same chat requests through `sglc serve` (the real `openai`
client, C concurrent requests) and through the in-process engine (`Engine.async_generate`, C at
a time), each system in its own process; throughput and p50/p99 latency. Then API speculative
execution: a program whose assistant turn holds three gens, on `sgl.OpenAI` against the server,
with and without `num_api_spec_tokens` (calls, tokens and time per program).

Every request is greedy with `ignore_eos`, so both systems generate the same number of tokens.
Run: python benchmarks/bench_server.py [--num N] [--concurrency C] [--max-tokens T]"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, bar_plot, save

TOPICS = ["the sea", "a city at night", "autumn", "a robot", "coffee", "mountains", "a library",
          "the moon", "trains", "a garden", "winter", "music"]


def requests(num: int) -> list[list[dict]]:
    return [[{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": f"Write a short poem about {TOPICS[i % len(TOPICS)]} "
                                         f"(number {i})."}] for i in range(num)]


def summary(latencies: list[float], wall: float, tokens: int) -> dict:
    lat = sorted(latencies)

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))]

    return {"requests_per_s": len(lat) / wall, "output_tok_per_s": tokens / wall,
            "p50_latency_s": pct(50), "p99_latency_s": pct(99), "wall_s": wall}


async def _bounded(calls, concurrency: int):
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []

    async def one(call):
        async with sem:
            t = time.perf_counter()
            n = await call()
            lat.append(time.perf_counter() - t)
            return n

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(c) for c in calls)))
    return summary(lat, time.perf_counter() - t0, tokens)


# ---- in-process (a worker process of its own) --------------------------------------------------
def in_process(args) -> dict:
    from sglc_runtime.engine import Engine

    eng = Engine()
    tok = eng.tokenizer
    sp = {"max_new_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True}
    prompts = [tok.apply_chat_template(m) for m in requests(args.num)]
    eng.generate(prompts[:4], sp)  # warm-up

    async def run():
        async def call(p):
            out = await eng.async_generate(p, sp)
            return out["meta_info"]["completion_tokens"]
        return await _bounded([lambda p=p: call(p) for p in prompts], args.concurrency)

    res = asyncio.run(run())
    eng.shutdown()
    return res


# ---- through the server ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "sglc", "serve", "--port", str(port),
                             "--served-model-name", "smol"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import urllib.request

    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("sglc serve did not start")


def through_server(args, base_url: str) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)

    async def run():
        async def call(m):
            r = await client.chat.completions.create(
                model="smol", messages=m, max_tokens=args.max_tokens, temperature=0,
                extra_body={"ignore_eos": True})
            return r.usage.completion_tokens
        await asyncio.gather(*(call(m) for m in requests(4)))  # warm-up
        return await _bounded([lambda m=m: call(m) for m in requests(args.num)],
                              args.concurrency)

    return asyncio.run(run())


def speculative(args, base_url: str) -> dict:
    import sglc as sgl

    backend = sgl.OpenAI("smol", base_url=base_url + "/v1", api_key="none")

    def body(s, name):
        s += sgl.user(f"Describe {name}: answer with the lines 'Job: ...', 'City: ...' and "
                      "'Known for: ...'.")
        s += sgl.assistant("Job: " + sgl.gen("job", stop="\n", max_tokens=16)
                           + "\nCity: " + sgl.gen("city", stop="\n", max_tokens=16)
                           + "\nKnown for: " + sgl.gen("known", stop="\n", max_tokens=24))

    names = ["Marie Curie", "Alan Turing", "Ada Lovelace", "Isaac Newton", "Frida Kahlo",
             "Nikola Tesla", "Jane Austen", "Charles Darwin"][:args.num_spec]
    out = {}
    for label, prog in [("spec", sgl.function(body, num_api_spec_tokens=64))]:
        backend.token_usage.reset()
        t = time.perf_counter()
        states = prog.run_batch([{"name": n} for n in names], temperature=0, backend=backend)
        wall = time.perf_counter() - t
        errors = [str(s.error()) for s in states if s.error() is not None]
        u = backend.token_usage
        out[label] = {"programs": len(names), "api_calls": u.num_calls,
                      "calls_saved": u.num_calls_saved, "prompt_tokens": u.prompt_tokens,
                      "completion_tokens": u.completion_tokens, "wall_s": wall,
                      "failed_programs": len(errors)}
    # without speculation a chat API cannot continue a written assistant turn: the same three
    # gens are three turns (the usual rewrite), each call re-sending the conversation
    @sgl.function
    def plain(s, name):
        s += sgl.user(f"Describe {name}. What is their job? One line.")
        s += sgl.assistant(sgl.gen("job", stop="\n", max_tokens=16))
        s += sgl.user("Which city? One line.")
        s += sgl.assistant(sgl.gen("city", stop="\n", max_tokens=16))
        s += sgl.user("What are they known for? One line.")
        s += sgl.assistant(sgl.gen("known", stop="\n", max_tokens=24))

    backend.token_usage.reset()
    t = time.perf_counter()
    plain.run_batch([{"name": n} for n in names], temperature=0, backend=backend)
    u = backend.token_usage
    out["three_turns"] = {"programs": len(names), "api_calls": u.num_calls, "calls_saved": 0,
                          "prompt_tokens": u.prompt_tokens,
                          "completion_tokens": u.completion_tokens,
                          "wall_s": time.perf_counter() - t, "failed_programs": 0}
    # a completion model runs the very same program with and without speculation
    comp = sgl.OpenAI("smol", base_url=base_url + "/v1", api_key="none", is_chat_model=False)

    def few_shot(s, name):
        s += "Name: Alan Turing\nJob: mathematician\nCity: London\nField: computing\n\n"
        s += "Name: Pablo Picasso\nJob: painter\nCity: Paris\nField: cubism\n\n"
        s += (f"Name: {name}\nJob:" + sgl.gen("job", stop="\n", max_tokens=16)
              + "\nCity:" + sgl.gen("city", stop="\n", max_tokens=16)
              + "\nField:" + sgl.gen("field", stop="\n", max_tokens=16))

    for label, spec_tokens in [("completion_plain", None), ("completion_spec", 48)]:
        comp.token_usage.reset()
        t = time.perf_counter()
        states = sgl.function(few_shot, num_api_spec_tokens=spec_tokens).run_batch(
            [{"name": n} for n in names], temperature=0, backend=comp)
        u = comp.token_usage
        out[label] = {"programs": len(names), "api_calls": u.num_calls,
                      "calls_saved": u.num_calls_saved, "prompt_tokens": u.prompt_tokens,
                      "completion_tokens": u.completion_tokens,
                      "wall_s": time.perf_counter() - t,
                      "failed_programs": sum(s.error() is not None for s in states),
                      "values": [[s["job"], s["city"], s["field"]] for s in states
                                 if s.error() is None]}
    out["completion_same_values"] = (out["completion_plain"]["values"]
                                     == out["completion_spec"]["values"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--num-spec", type=int, default=8)
    ap.add_argument("--worker", choices=["in_process"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(in_process(args)))
        return
    cmd = [sys.executable, __file__, "--worker", "in_process", "--num", str(args.num),
           "--concurrency", str(args.concurrency), "--max-tokens", str(args.max_tokens)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    local = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))[7:])
    port = free_port()
    proc = start_server(port)
    try:
        url = f"http://127.0.0.1:{port}"
        remote = through_server(args, url)
        spec = speculative(args, url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "workload": {"requests": args.num, "concurrency": args.concurrency,
                     "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0},
        "in_process": local, "server": remote,
        "server_over_in_process": {k: remote[k] / local[k] for k in
                                   ("requests_per_s", "p50_latency_s", "p99_latency_s")},
        "speculative": spec,
        "cpu": os.popen("lscpu | grep 'Model name'").read().split(":")[-1].strip(),
    }
    save("server", result)
    bar_plot(RESULTS / "server.png", "sglc serve vs in-process engine; API speculative execution",
             {"requests/s": {"in-process": local["requests_per_s"],
                             "server": remote["requests_per_s"]},
              "p99 latency (s)": {"in-process": local["p99_latency_s"],
                                  "server": remote["p99_latency_s"]},
              "API calls, chat (8 programs)": {
                  "3 turns": spec["three_turns"]["api_calls"],
                  "1 speculative turn": spec["spec"]["api_calls"]},
              "API calls, completion (8 programs)": {
                  "plain": spec["completion_plain"]["api_calls"],
                  "speculative": spec["completion_spec"]["api_calls"]}}, "")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
