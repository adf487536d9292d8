"""The `sglang.utils` helpers that SGLang's example programs use, at the same path."""

from __future__ import annotations

import json
import time
import urllib.request


def print_highlight(text) -> None:
    """Print `text` (SGLang highlights it in notebooks)."""
    print(text)


def read_jsonl(filename: str) -> list:
    with open(filename) as f:
        return [json.loads(line) for line in f if line.strip()]


def dump_state_text(filename: str, states: list, mode: str = "w") -> None:
    """Write each program state's text to `filename`, separated by a rule."""
    with open(filename, mode) as f:
        for i, s in enumerate(states):
            text = s if isinstance(s, str) else s.text()
            f.write(f"{'=' * 40} {i} {'=' * 40}\n{text}\n")


def wait_for_server(base_url: str, timeout: float | None = None) -> None:
    """Poll `base_url`/v1/models until the server answers (or `timeout` seconds pass)."""
    start = time.time()
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/v1/models", timeout=5):
                return
        except OSError:
            if timeout is not None and time.time() - start > timeout:
                raise TimeoutError(f"{base_url} did not answer in {timeout} s") from None
            time.sleep(1)


def terminate_process(process) -> None:
    """Stop a server process started with subprocess (and wait for it)."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except Exception:  # noqa: BLE001 - it did not stop: kill it
        process.kill()
