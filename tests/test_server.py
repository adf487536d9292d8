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
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
