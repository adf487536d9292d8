"""The OpenAI-compatible server, driven by the official `openai` client over loopback."""

import json
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)


def test_models(client):
    assert [m.id for m in client.models.list()] == ["smol"]


def test_chat_completion_matches_engine(client, engine):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model="smol", messages=msgs, max_tokens=20, temperature=0)
    prompt = engine.tokenizer.apply_chat_template(msgs)
    ref = engine.generate(prompt, {"max_new_tokens": 20, "temperature": 0})
    assert r.choices[0].message.content == ref["text"]
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == ref["meta_info"]["completion_tokens"]


def test_chat_stream(client):
    msgs = [{"role": "user", "content": "Count to five."}]
    full = client.chat.completions.create(model="smol", messages=msgs, max_tokens=24,
                                          temperature=0)
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smol", messages=msgs, max_tokens=24, temperature=0, stream=True)]
    assert "".join(pieces) == full.choices[0].message.content


def test_completion_with_stop_and_n(client):
    r = client.completions.create(model="smol", prompt="1, 2, 3, 4,", max_tokens=16,
                                  temperature=0, stop=[" 7"])
    assert r.choices[0].text == " 5, 6," and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=4, n=3,
                                  temperature=1.0)
    assert len(r.choices) == 3 and r.usage.completion_tokens <= 12


def test_bad_requests_get_400(client, base_url):
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.completions.create(model="smol", prompt="Hi", max_tokens=4, top_p=3.0)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="smol", messages=[], max_tokens=4)
    status, body = post(base_url + "/generate", b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    status, body = post(base_url + "/generate", json.dumps({"text": "Hi", "sampling_params": {
        "max_new_tokens": 4, "temperature": 0}}).encode())
    assert status == 200 and body["meta_info"]["completion_tokens"] <= 4


def post(url: str, data: bytes) -> tuple[int, dict]:
    return request(url, data)


# ---- OpenAI parameters: each honoured, or refused with a 400 that names it ---------------------
def test_completion_logprobs_match_engine(client, engine):
    prompt = "The capital of France is"
    r = client.completions.create(model="smol", prompt=prompt, max_tokens=6, temperature=0,
                                  logprobs=3)
    ref = engine.generate(prompt, {"max_new_tokens": 6, "temperature": 0}, return_logprob=True,
                          top_logprobs_num=3)
    lp = r.choices[0].logprobs
    want = ref["meta_info"]["output_token_logprobs"]
    assert len(lp.tokens) == len(want) == r.usage.completion_tokens
    assert lp.token_logprobs == pytest.approx([x[0] for x in want], abs=1e-5)
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for tok, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and max(top.values()) == pytest.approx(chosen, abs=1e-5)
        assert top[tok] == pytest.approx(chosen, abs=1e-5)  # greedy: the top-1 token


def test_completion_echo_scores_the_prompt(client, engine):
    prompt = "The capital of France is Paris"
    r = client.completions.create(model="smol", prompt=prompt, max_tokens=0, echo=True,
                                  logprobs=1, temperature=0)
    c = r.choices[0]
    assert c.text == prompt
    assert "".join(c.logprobs.tokens) == prompt and c.logprobs.token_logprobs[0] is None
    ref = engine.generate(prompt, {"max_new_tokens": 0}, return_logprob=True,
                          logprob_start_len=0)["meta_info"]["input_token_logprobs"]
    assert c.logprobs.token_logprobs[1:] == pytest.approx([x[0] for x in ref[1:]], abs=1e-5)
    assert [prompt[o:o + len(t)] for o, t in zip(c.logprobs.text_offset, c.logprobs.tokens)] \
        == c.logprobs.tokens
    r = client.completions.create(model="smol", prompt=prompt, max_tokens=3, echo=True,
                                  temperature=0)
    assert r.choices[0].text.startswith(prompt) and len(r.choices[0].text) > len(prompt)


def test_chat_logprobs_and_top_logprobs(client):
    msgs = [{"role": "user", "content": "Say hello."}]
    r = client.chat.completions.create(model="smol", messages=msgs, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert bytes(t.bytes).decode() == t.token and len(t.top_logprobs) == 4
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-5)
    r = client.chat.completions.create(model="smol", messages=msgs, max_tokens=5, temperature=0)
    assert r.choices[0].logprobs is None


def test_n_seed_stop_and_cached_tokens(client):
    kw = dict(model="smol", prompt="List three colors:", max_tokens=8, temperature=1.0, n=3,
              seed=11)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # seeded
    assert len({c.text for c in a.choices}) > 1  # distinct samples
    assert b.usage.prompt_tokens_details.cached_tokens > 0
    r = client.chat.completions.create(model="smol", max_tokens=30, temperature=0, stop=["3"],
                                       messages=[{"role": "user", "content": "Count: 1, 2,"}])
    assert "3" not in r.choices[0].message.content


def test_stream_include_usage_and_n(client):
    msgs = [{"role": "user", "content": "Name a fruit."}]
    chunks = list(client.chat.completions.create(
        model="smol", messages=msgs, max_tokens=8, temperature=0.9, n=2, seed=3, stream=True,
        stream_options={"include_usage": True}, logprobs=True))
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    texts = {0: "", 1: ""}
    ntok = {0: 0, 1: 0}
    for c in chunks[:-1]:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            ntok[ch.index] += len(ch.logprobs.content) if ch.logprobs else 0
    assert ntok[0] + ntok[1] == last.usage.completion_tokens
    full = client.chat.completions.create(model="smol", messages=msgs, max_tokens=8,
                                          temperature=0.9, n=2, seed=3)
    assert [texts[0], texts[1]] == [c.message.content for c in full.choices]
    plain = list(client.completions.create(model="smol", prompt="Hi", max_tokens=3, stream=True))
    assert all(getattr(c, "usage", None) is None for c in plain)


@pytest.mark.parametrize("kwargs, param", [
    (dict(suffix="end"), "suffix"),
    (dict(extra_body={"logit_bias": {"42": 5}}), "logit_bias"),
    (dict(extra_body={"frobnicate": 1}), "frobnicate"),
    (dict(best_of=3), "best_of"),
    (dict(stream_options={"include_usage": True}), "stream_options"),
    (dict(logprobs=50), "logprobs"),
    (dict(max_tokens=-1), "max_tokens"),
])
def test_refused_completion_parameters_name_themselves(client, kwargs, param):
    kwargs = {"max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smol", prompt="Hi", **kwargs)
    assert e.value.body["param"] == param and param in e.value.body["message"]


@pytest.mark.parametrize("kwargs, param", [
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(tools=[{"type": "function", "function": {"parameters": {}}}]), "tools"),  # no name
    (dict(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}],
          extra_body={"regex": "a"}), "tools"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "x"}}]}]), "messages"),
    (dict(extra_body={"echo": True}), "echo"),
])
def test_refused_chat_parameters_name_themselves(client, kwargs, param):
    kwargs = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", **kwargs)
    assert e.value.body["param"] == param


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.completions.create(model="nope", prompt="Hi", max_tokens=2)


# ---- security defaults ------------------------------------------------------------------------
def test_api_key_guards_every_route_and_size_limit(engine):
    from conftest import start_server

    from sglc_runtime.server.app import create_app

    url, stop = start_server(create_app(engine, "smol", api_key="s3cret",
                                        max_request_bytes=4096))
    try:
        for path, body in [("/v1/models", None), ("/get_model_info", None),
                           ("/generate", b'{"text": "Hi"}'), ("/flush_cache", b"{}"),
                           ("/v1/completions", b'{"prompt": "Hi"}')]:
            status, resp = request(url + path, body)
            assert status == 401 and resp["error"]["type"] == "authentication_error", path
        ok = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.completions.create(model="smol", prompt="Hi", max_tokens=2).choices
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="smol", prompt="Hi", max_tokens=2)
        status, resp = request(url + "/v1/completions",
                               json.dumps({"prompt": "x" * 5000}).encode(), key="s3cret")
        assert status == 413 and "4096" in resp["error"]["message"]
    finally:
        stop()


def request(url: str, data: bytes | None, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_100_parallel_requests_get_exact_token_counts(client, engine):
    from concurrent.futures import ThreadPoolExecutor

    asked = [1 + i % 9 for i in range(100)]

    def one(i):
        if i % 2:
            r = client.completions.create(model="smol", prompt=f"Item {i}:", max_tokens=asked[i],
                                          temperature=0.7, seed=i, extra_body={"ignore_eos": True})
        else:
            r = client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": f"Say {i}."}],
                max_tokens=asked[i], temperature=0.7, seed=i, extra_body={"ignore_eos": True})
        return r.usage.completion_tokens, r.choices[0].finish_reason

    with ThreadPoolExecutor(100) as pool:
        got = list(pool.map(one, range(100)))
    assert [n for n, _ in got] == asked
    assert all(reason == "length" for _, reason in got)
    stats = engine.stats()
    assert stats["num_running"] == stats["num_waiting"] == 0
    engine.check_invariants()
