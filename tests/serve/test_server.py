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
from r1lab.serve.app import IncrementalDetokenizer, StreamSplitter, cut_at_stop  # noqa: E402


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
    ("It is <answer>8</answer>.", (None, "It is 8.")),  # the tags go, the words stay
])
def test_split_reasoning(text, want):
    assert split_reasoning(text) == want


def test_a_prompt_that_opened_the_think_block():
    assert split_reasoning("a+b</think>c", thinking=True) == ("a+b", "c")
    assert split_reasoning("still thinking", thinking=True) == ("still thinking", "")


STREAMED = [
    "<think>\n3+5=8</think>\n\n<answer>8</answer>",
    "no tags, just words",
    "<think>cut off mid-thought",
    "pre <think>x</think> post <answer>9</answer> tail",
    "<think>a<b</think>x < y <answer>1</answer>",  # '<' that never becomes a tag
    "<think>ab</think>answer STOP and more",
]


@pytest.mark.parametrize("text", STREAMED)
@pytest.mark.parametrize("pieces", [1, 3, 5])
def test_stream_splitter_sends_what_split_reasoning_returns(text, pieces):
    """Fed in pieces that cut through tags and stop strings, the deltas add up to the
    non-streamed answer (cut at the stop string), and nothing sent is ever taken back."""
    stop = ("STOP",)
    sp = StreamSplitter(stop=stop)
    chunks = [text[i:i + pieces] for i in range(0, len(text), pieces)]
    sent = [sp.feed(c) for c in chunks] + [sp.finish(text)]
    reasoning, content = "".join(r for r, _ in sent), "".join(c for _, c in sent)
    want_r, want_c = split_reasoning(cut_at_stop(text, stop))
    assert (reasoning.strip() or None if want_r is None else reasoning.strip()) == want_r
    assert content.strip() == want_c
    assert "STOP" not in content and "<answer>" not in content and "</think" not in content


def test_stream_splitter_in_a_prompt_opened_think_block():
    sp = StreamSplitter(thinking=True)
    sent = [sp.feed(c) for c in ["1+1", "=2</th", "ink>", "2"]] + [sp.finish("1+1=2</think>2")]
    assert "".join(r for r, _ in sent) == "1+1=2" and "".join(c for _, c in sent) == "2"
    assert sent[0] == ("1+1", "")  # reasoning streams before the block is closed


def test_cut_at_stop():
    assert cut_at_stop("abcSTOPdefEND", ("END", "STOP")) == "abc"
    assert cut_at_stop("abc", ("x",)) == "abc" and cut_at_stop("abc", ()) == "abc"


def test_incremental_detokenizer_adds_up_to_decode():
    from r1lab.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    ids = tok("<think>12+30:2+0=2</think><answer>42</answer>", add_special_tokens=False)["input_ids"]
    d = IncrementalDetokenizer(tok)
    pieces = [d.add(i) for i in ids]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert pieces[0] == "<think>"  # a tag is one token, and one piece


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
                assert json.load(r)["status"] == "ok"
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
    ({"messages": [{"role": "user", "content": "1+1"}], "tools": [{"type": "function"}]}, "tools", "not supported"),
    ({"messages": [{"role": "system", "content": "hi"}]}, "messages", "at least one user message"),
])
def test_bad_requests_get_openai_style_400s_naming_the_field(server, body, param, words):
    status, err = post(server, body)
    assert status == 400, err
    assert err["error"]["param"] == param and err["error"]["type"] == "invalid_request_error"
    assert words in err["error"]["message"]


def test_asking_past_the_context_is_a_400(server, checkpoint):
    context = json.loads((checkpoint / "config.json").read_text())["max_position_embeddings"]
    status, err = post(server, {"messages": [{"role": "user", "content": "1+1"}], "max_tokens": context})
    assert status == 400 and err["error"]["param"] == "max_tokens"
    assert f"context of {context}" in err["error"]["message"]


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


def stream(base: str, body: dict) -> list:
    """POST with stream: true; the parsed data events ([DONE] as the string)."""
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assemble(events: list, n: int) -> list[dict]:
    """Per choice: the streamed reasoning and content, joined, and its finish_reason."""
    out = [{"reasoning_content": "", "content": "", "finish_reason": None} for _ in range(n)]
    for e in events[:-1]:
        for c in e["choices"]:
            for key in ("reasoning_content", "content"):
                out[c["index"]][key] += c["delta"].get(key) or ""
            out[c["index"]]["finish_reason"] = out[c["index"]]["finish_reason"] or c["finish_reason"]
    return out


@pytest.mark.parametrize("extra", [{"temperature": 0}, {"temperature": 1.0, "seed": 3, "n": 2},
                                   {"temperature": 0, "stop": ["3"]}])
def test_streaming_adds_up_to_the_plain_answer(server, extra):
    """Streamed deltas joined == the non-streamed message, per choice; the stream opens with
    the role, closes with each finish_reason, the usage (when asked), and [DONE]."""
    body = {"messages": [{"role": "user", "content": "345+67"}], "max_tokens": 24, **extra}
    status, plain = post(server, body)
    assert status == 200
    events = stream(server, {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == [] and events[-2]["usage"] == plain["usage"]
    n = extra.get("n", 1)
    assert [e["choices"][0]["delta"] for e in events[:n]] == [{"role": "assistant", "content": ""}] * n
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events[:-2])
    got = assemble(events[:-1], n)
    for g, want in zip(got, plain["choices"], strict=True):
        assert g["content"].strip() == want["message"]["content"]
        assert (g["reasoning_content"].strip() or None) == want["message"]["reasoning_content"]
        assert g["finish_reason"] == want["finish_reason"]
    if "stop" in extra:
        assert all("3" not in c["message"]["content"] for c in plain["choices"])


# ---------------------------------------------------------------- batching concurrent requests
def test_batcher_routes_each_requests_rows_back_to_it(checkpoint):
    """Jobs waiting together are decoded as one batch with the real sampler: each gets exactly
    the rows the sampler gives its prompt in that batch; a streaming job gets its own steps; a
    seeded job is decoded alone."""
    from r1lab.config import ModelConfig
    from r1lab.models import load_policy
    from r1lab.rollout import SamplingParams
    from r1lab.rollout.hf import HFSampler
    from r1lab.serve.app import Batcher, _Job

    model, tok = load_policy(ModelConfig(path=str(checkpoint), device="cpu"))
    sampler = HFSampler(model, tok)
    params = SamplingParams(n=2, max_new_tokens=12, temperature=0.0)
    prompts = [tok(f"Q:{q}\nA:")["input_ids"] for q in ("12+30", "345+67", "8+91")]
    batcher = Batcher(sampler, max_prompts=8, window_s=1.0)  # a long window: all three join
    steps: dict[int, list[int]] = {0: [], 1: []}

    def record(t, rows, toks):
        for r, k in zip(rows, toks, strict=True):
            steps[r].append(k)

    seeded = batcher.submit(_Job(prompts[0], SamplingParams(n=2, max_new_tokens=12, seed=5)))
    jobs = [batcher.submit(_Job(prompts[0], params)), batcher.submit(_Job(prompts[1], params, record)),
            batcher.submit(_Job(prompts[2], params))]
    for j in (seeded, *jobs):
        j.wait()
    assert seeded.batch_prompts == 1 and all(j.batch_prompts == 3 for j in jobs)
    want = sampler.generate(prompts, params)  # the same batch, decoded directly
    lengths = want.lengths.tolist()
    for i, j in enumerate(jobs):
        assert j.error is None
        assert j.texts == want.texts[2 * i:2 * i + 2]
        assert j.finish_reasons == want.finish_reasons[2 * i:2 * i + 2]
        assert j.completion_tokens == sum(lengths[2 * i:2 * i + 2])
    for r in (0, 1):  # the streamed tokens of job 1 are its two rows, eos included
        assert tok.decode(steps[r], skip_special_tokens=True) == jobs[1].texts[r]


def test_concurrent_requests_are_batched_and_all_answered(server):
    import concurrent.futures

    questions = [f"{a}+{b}" for a, b in zip(range(10, 90, 10), range(91, 99), strict=True)]

    def ask(q):
        req = urllib.request.Request(
            server + "/v1/chat/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"messages": [{"role": "user", "content": q}], "max_tokens": 24, "temperature": 1.0}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            return int(r.headers["x-r1lab-batch-prompts"]), json.load(r)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, questions))
    assert len(answers) == 8
    for batch, body in answers:
        assert 1 <= batch <= 8 and body["choices"][0]["finish_reason"] in ("stop", "length")
        assert body["usage"]["completion_tokens"] <= 24
    assert max(b for b, _ in answers) > 1  # requests that arrived together were decoded together
