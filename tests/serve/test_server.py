"""`r1lab serve`: a real server process, a real HTTP client (urllib), a tiny real checkpoint."""

from __future__ import annotations

import doctest
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from r1lab.serve import app as serve_app  # noqa: E402
from r1lab.serve import resolve_template, split_reasoning  # noqa: E402


# ---------------------------------------------------------------- splitting, by hand
@pytest.mark.parametrize("text, want", [
    ("<think>3+5=8</think><answer>8</answer>", ("3+5=8", "8")),
    ("<think> a\nb </think> <answer> 12 </answer>", ("a\nb", "12")),
    ("no tags at all", (None, "no tags at all")),
    ("<answer>7</answer>", (None, "7")),
    ("thought first</think>then 9", ("thought first", "then 9")),  # think opened by the prompt
    ("<think>cut at the length lim", ("cut at the length lim", "")),
    ("<think>x</think>", ("x", "")),
    ("<think>x</think><answer>unclosed", ("x", "unclosed")),
    ("pre <think>x</think> post", ("x", "pre  post")),
])
def test_split_reasoning(text, want):
    assert split_reasoning(text) == want


def test_docstring_examples():
    assert doctest.testmod(serve_app).failed == 0


def test_template_resolution(tmp_path):
    class Plain:
        chat_template = None

    class Chat:
        chat_template = "{{ messages }}"

    ckpt = tmp_path / "run" / "rl"
    ckpt.mkdir(parents=True)
    assert resolve_template(ckpt, Plain()) == "r1_zero"  # no chat template, no run config
    (tmp_path / "run" / "config.yaml").write_text("data:\n  template: tiny\n")
    assert resolve_template(ckpt, Plain()) == "tiny"  # the run's own template
    assert resolve_template(ckpt, Chat()) == "chat"  # a chat template wins
    assert resolve_template(ckpt, Chat(), "plain") == "plain"  # an explicit choice wins
    with pytest.raises(KeyError, match="r1_zero"):
        resolve_template(ckpt, Plain(), "r1-zero")  # an unknown name lists the valid ones


# ---------------------------------------------------------------- the real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from r1lab.config import TinyModelConfig
    from r1lab.models.tiny import build_char_tokenizer, build_tiny_model

    run = tmp_path_factory.mktemp("run")
    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2,
                                             intermediate_size=64), tok, seed=0)
    model.save_pretrained(run / "rl")
    tok.save_pretrained(run / "rl")
    (run / "config.yaml").write_text("data:\n  template: tiny\n")  # as `r1lab demo` leaves it
    return run / "rl"


@pytest.fixture(scope="module")
def server(checkpoint):
    port = _free_port()
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", str(checkpoint), "--port", str(port),
                             "--name", "tiny-r1", "--max-tokens", "24"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=1) as r:
                assert json.load(r) == {"status": "ok"}
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("server did not start:\n" + proc.stdout.read())
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=20)
    banner = proc.stdout.read()
    assert "serving tiny-r1 (template tiny)" in banner, banner


def post(base: str, body, path: str = "/v1/chat/completions") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_models_lists_the_served_model(server):
    with urllib.request.urlopen(server + "/v1/models", timeout=10) as r:
        body = json.load(r)
    assert [m["id"] for m in body["data"]] == ["tiny-r1"] and body["object"] == "list"


def test_greedy_answer_is_the_samplers_split_as_deepseek_does(server, checkpoint):
    """The server's greedy answer equals r1lab's sampler on the same checkpoint and prompt (the
    run's `tiny` template), split into reasoning_content / content; usage counts the tokens."""
    from r1lab.config import ModelConfig
    from r1lab.models import load_policy
    from r1lab.rollout import SamplingParams
    from r1lab.rollout.hf import HFSampler

    status, body = post(server, {"model": "tiny-r1", "temperature": 0, "max_tokens": 20,
                                 "messages": [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "12+30"}]})
    assert status == 200, body
    model, tok = load_policy(ModelConfig(path=str(checkpoint), device="cpu"))
    ids = tok("Q:12+30\nA:")["input_ids"]
    want = HFSampler(model, tok).generate([ids], SamplingParams(max_new_tokens=20, temperature=0.0))
    reasoning, content = split_reasoning(want.texts[0])
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": content, "reasoning_content": reasoning}
    assert choice["finish_reason"] == want.finish_reasons[0]
    n = int(want.lengths[0])
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}
    assert body["object"] == "chat.completion" and body["model"] == "tiny-r1"
    assert body["id"].startswith("chatcmpl-")


def test_n_samples_seed_and_server_default_length(server):
    req = {"messages": [{"role": "user", "content": "345+67"}], "n": 3, "seed": 7, "temperature": 1.0}
    s1, a = post(server, req)
    s2, b = post(server, req)
    assert s1 == s2 == 200
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert a["choices"] == b["choices"]  # same seed, same samples
    assert a["usage"]["completion_tokens"] <= 3 * 24  # --max-tokens 24 is the default cap
    _, c = post(server, {**req, "seed": 8})
    assert c["choices"] != a["choices"]


def test_stop_string_ends_the_answer(server):
    """Greedy without and with a stop string taken from the greedy answer itself: the stopped
    answer is the prefix up to (and including) it, finish_reason 'stop'."""
    req = {"messages": [{"role": "user", "content": "8+91"}], "temperature": 0, "max_tokens": 24}
    _, free = post(server, req)
    m = free["choices"][0]["message"]
    full = (m["reasoning_content"] or "") + m["content"]
    stop = next((full[i:i + 2] for i in range(3, len(full) - 2) if full[i:i + 2].strip()), None)
    if stop is None:
        pytest.skip("the random model's greedy answer has no usable stop string")
    status, body = post(server, {**req, "stop": [stop]})
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] < free["usage"]["completion_tokens"]


@pytest.mark.parametrize("body, param, words", [
    ({}, "messages", "Field required"),
    ({"messages": []}, "messages", "at least 1"),
    ({"messages": [{"role": "user", "content": "1+1"}], "temperature": -1}, "temperature", "greater than or equal"),
    ({"messages": [{"role": "wizard", "content": "1+1"}]}, "messages.0.role", "Input should be"),
    ({"messages": [{"role": "user", "content": "1+1"}], "stream": True}, "stream", "streaming is not supported"),
    ({"messages": [{"role": "user", "content": "1+1"}], "tools": [{"type": "function"}]}, "tools", "not supported"),
    ({"messages": [{"role": "system", "content": "hi"}]}, "messages", "at least one user message"),
])
def test_bad_requests_get_openai_style_400s_naming_the_field(server, body, param, words):
    status, err = post(server, body)
    assert status == 400, err
    assert err["error"]["param"] == param and err["error"]["type"] == "invalid_request_error"
    assert words in err["error"]["message"]


def test_malformed_json_and_unknown_model(server):
    status, err = post(server, b"{not json")
    assert status == 400 and err["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in err["error"]["message"] and err["error"]["param"] is None
    status, err = post(server, b"[1, 2]")
    assert status == 400 and "must be a JSON object" in err["error"]["message"]
    status, err = post(server, {"model": "gpt-9", "messages": [{"role": "user", "content": "1+1"}]})
    assert status == 404 and "tiny-r1" in err["error"]["message"] and err["error"]["param"] == "model"
    status, _ = post(server, {"messages": [{"role": "user", "content": "1+1"}], "max_tokens": 2})
    assert status == 200  # the server is still up after the bad ones
