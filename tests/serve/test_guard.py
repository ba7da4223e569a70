"""`r1lab serve` beyond localhost: API key, request size and concurrency limits, a streaming client
that disconnects, and prompts that are exactly the training's (a real server process on a
chat-template checkpoint trained by `run_sft`, a real HTTP client)."""

from __future__ import annotations

import asyncio
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from r1lab.serve.guard import Guard  # noqa: E402
from standin import build_standin  # noqa: E402

KEY = "sk-test-0123"
QUESTION = "What is 12 + 30?"


# ---------------------------------------------------------------- the guard, by hand (ASGI)
def _call(guard: Guard, path: str = "/v1/chat/completions", headers=(), body: bytes = b"{}",
          chunks: int = 1) -> tuple[int, dict]:
    """One request through `guard` (body sent in `chunks` parts, without a length when > 1)."""
    parts = [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]
    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers]
    if chunks == 1:
        hdrs.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "path": path, "headers": hdrs, "method": "POST"}
    msgs = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[dict] = []

    async def receive():
        return msgs.pop(0) if msgs else {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    asyncio.run(guard(scope, receive, send))
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body_out or b"{}")


async def _echo(scope, receive, send):
    msg = await receive()
    body = json.dumps({"got": len(msg["body"])}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_guard_api_key_size_and_health():
    g = Guard(_echo, api_key=KEY, max_request_bytes=100)
    assert _call(g)[0] == 401
    assert _call(g, headers=[("Authorization", "Bearer wrong")])[0] == 401
    status, err = _call(g, headers=[("Authorization", f"Bearer {KEY}")], body=b"x" * 101)
    assert status == 413 and "limit of 100" in err["error"]["message"]
    # a body sent in chunks without a length is counted as it comes
    assert _call(g, headers=[("Authorization", f"Bearer {KEY}")], body=b"x" * 101, chunks=3)[0] == 413
    assert _call(g, headers=[("Authorization", f"Bearer {KEY}")], body=b"x" * 100) == (200, {"got": 100})
    assert _call(g, path="/health")[0] == 200  # health checks need no key
    assert g.active == 0


def test_guard_concurrency_limit_counts_requests_in_flight():
    release = asyncio.Event()

    async def slow(scope, receive, send):
        await receive()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    g = Guard(slow, max_concurrent=2)

    async def main():
        statuses: list[int] = []

        async def one():
            msgs = [{"type": "http.request", "body": b"{}", "more_body": False}]
            sent: list[dict] = []

            async def receive():
                return msgs.pop(0) if msgs else {"type": "http.disconnect"}

            async def send(m):
                sent.append(m)

            await g({"type": "http", "path": "/v1/chat/completions", "headers": []}, receive, send)
            statuses.append(sent[0]["status"])

        tasks = [asyncio.create_task(one()) for _ in range(3)]
        await asyncio.sleep(0.05)  # two are in flight, the third was refused at once
        assert statuses == [429] and g.active == 2
        release.set()
        await asyncio.gather(*tasks)
        return statuses

    assert sorted(asyncio.run(main())) == [200, 200, 429]
    assert g.active == 0


# ---------------------------------------------------------------- a real server on a chat run
@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    """A stand-in chat model fine-tuned 2 steps by `run_sft` with `template: chat`."""
    from r1lab.config import RunConfig
    from r1lab.pipeline.sft import run_sft

    root = tmp_path_factory.mktemp("chat")
    base = build_standin(root / "base", context=2048)
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps({"question": q, "completion": f"<think>{q}</think><answer>{a}</answer>"}) + "\n"
                            for q, a in [(QUESTION, "42"), ("What is 2 + 2?", "4")]))
    cfg = RunConfig.model_validate({"model": {"path": str(base), "device": "cpu"},
                                    "data": {"source": str(data), "template": "chat"},
                                    "sft": {"steps": 2, "batch_size": 2, "warmup_steps": 0},
                                    "log": {"progress": False}})  # fmt: skip
    run_sft(cfg, root / "run")
    return root / "run" / "final"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def guarded(chat_run):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", str(chat_run), "--port", str(port),
                             "--api-key", KEY, "--max-request-bytes", "4096", "--max-tokens", "16"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=1):
                break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("server did not start:\n" + proc.stdout.read())
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=20)
    assert "(template chat)" in proc.stdout.read()


def post(base: str, body, key: str | None = KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(base + "/v1/chat/completions", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def health(base: str) -> dict:
    with urllib.request.urlopen(base + "/health", timeout=10) as r:
        return json.load(r)


def test_a_request_without_the_key_gets_401(guarded):
    req = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2}
    status, err = post(guarded, req, key=None)
    assert status == 401 and err["error"]["type"] == "authentication_error"
    assert post(guarded, req, key="sk-wrong")[0] == 401
    assert post(guarded, req)[0] == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(guarded + "/v1/models", timeout=10)
    assert e.value.code == 401


def test_an_oversized_request_gets_413(guarded):
    status, err = post(guarded, {"messages": [{"role": "user", "content": "x" * 5000}]})
    assert status == 413 and "4096" in err["error"]["message"]


def test_serve_builds_the_prompt_the_training_did(guarded, chat_run):
    """The checkpoint's saved template (system message included) is what serve uses: the
    server's prompt token count is the training prompt's, and its greedy answer is the sampler's
    on the training prompt."""
    from r1lab.config import ModelConfig
    from r1lab.data.templates import TEMPLATES, load_template
    from r1lab.models import load_policy
    from r1lab.rollout import SamplingParams
    from r1lab.rollout.hf import HFSampler
    from r1lab.serve.app import serve_template, split_reasoning

    model, tok = load_policy(ModelConfig(path=str(chat_run), device="cpu"))
    trained = TEMPLATES.get("chat")(QUESTION, tok)  # what run_sft fed the model
    saved = load_template(chat_run)
    assert saved["template"] == "chat" and saved["system"] in trained
    from r1lab.data.templates import saved_prompt

    assert saved_prompt(serve_template(chat_run, tok), [{"role": "user", "content": QUESTION}], tok) == trained
    ids = tok(trained, add_special_tokens=False)["input_ids"]
    status, body = post(guarded, {"messages": [{"role": "user", "content": QUESTION}],
                                  "temperature": 0, "max_tokens": 12})
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == len(ids)
    want = HFSampler(model, tok).generate([ids], SamplingParams(max_new_tokens=12, temperature=0.0))
    reasoning, content = split_reasoning(want.texts[0])
    assert body["choices"][0]["message"]["content"] == content


def test_a_streaming_client_that_disconnects_stops_its_generation(guarded):
    before = health(guarded)
    body = json.dumps({"messages": [{"role": "user", "content": QUESTION}], "stream": True,
                       "max_tokens": 1900, "temperature": 1.0}).encode()  # fmt: skip
    host, port = guarded.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        got = b""
        while got.count(b"data: ") < 4:  # a few tokens streamed: the generation is running
            got += s.recv(4096)
    # the client is gone: its rows stop, the batcher is free again, long before 1900 tokens
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        h = health(guarded)
        if h["cancelled"] > before["cancelled"] and h["running"] == 0:
            break
        time.sleep(0.05)
    assert h["cancelled"] == before["cancelled"] + 1 and h["running"] == 0
    assert h["tokens"] - before["tokens"] < 1900
