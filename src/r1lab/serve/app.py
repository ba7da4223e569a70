"""The server behind `r1lab serve` (see the package docstring)."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from r1lab.data.templates import TEMPLATES, load_template, saved_prompt, template_record
from r1lab.r1_format import parse_r1
from r1lab.serve.guard import Guard

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _parts(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a completion, unstripped: `r1lab.r1_format.parse_r1`'s split."""
    parts = parse_r1(text)
    return parts.reasoning, parts.content


def split_reasoning(text: str, thinking: bool = False) -> tuple[str | None, str]:
    """A completion -> (reasoning_content, content), DeepSeek's convention.

    The thinking is what lies inside `<think> </think>`; with `thinking` (the prompt opened the
    think block, as DeepSeek-R1's chat template does), or when `</think>` comes without a
    `<think>`, it runs from the start; an unclosed `<think>` (cut at the length limit) thinks
    to the end and has no answer yet. The answer is the rest, without its `<answer> </answer>`
    tags.

    >>> split_reasoning("<think>3+5=8</think><answer>8</answer>")
    ('3+5=8', '8')
    >>> split_reasoning("the answer is 8")
    (None, 'the answer is 8')
    >>> split_reasoning("3+5=8</think>\\n\\nIt is 8.")
    ('3+5=8', 'It is 8.')
    >>> split_reasoning("<think>3+5 is")
    ('3+5 is', '')
    """
    reasoning, content = _parts("<think>" + text if thinking else text)
    return (reasoning.strip() if reasoning is not None else None), content.strip()


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to the first stop string (which OpenAI's API leaves out of the answer)."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many trailing characters a stream must hold back: a prefix of a tag or of a stop
    string may be completed by the next token."""
    hold = 0
    for word in (*_TAGS, *stop):
        for k in range(min(len(word) - 1, len(text)), hold, -1):
            if text.endswith(word[:k]):
                hold = k
                break
    return hold


class StreamSplitter:
    """Turns a growing completion into (reasoning_content, content) deltas for streaming: what
    has been sent is never taken back, so text that could still become a tag or a stop string
    is held back until it cannot; `finish(final_text)` sends the rest. Leading whitespace of
    each part is dropped, as `split_reasoning` does."""

    def __init__(self, thinking: bool = False, stop: tuple[str, ...] = ()) -> None:
        self.prefix = "<think>" if thinking else ""
        self.stop = stop
        self.text = ""
        self.sent = ["", ""]  # reasoning, content sent so far (after their leading whitespace)

    def _deltas(self, text: str) -> tuple[str, str]:
        reasoning, content = _parts(self.prefix + text)
        out = []
        for i, part in enumerate((reasoning or "", content)):
            part = part.lstrip()
            new = part[len(self.sent[i]):] if part.startswith(self.sent[i]) else ""
            self.sent[i] += new
            out.append(new)
        return out[0], out[1]

    def feed(self, delta: str) -> tuple[str, str]:
        self.text += delta
        visible = cut_at_stop(self.text, self.stop)
        return self._deltas(visible[: len(visible) - _held_back(visible, self.stop)])

    def finish(self, final_text: str) -> tuple[str, str]:
        return self._deltas(cut_at_stop(final_text, self.stop))


class IncrementalDetokenizer:
    """Token ids in, new text out, without re-decoding everything: the window technique of
    text-generation-inference (a token that completes a multi-byte character or merges with
    the previous one is only emitted once the text is stable)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids = tokenizer, []
        self.prefix_offset = self.read_offset = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        prefix = decode(self.ids[self.prefix_offset:self.read_offset])
        text = decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix):]
        return ""


def resolve_template(checkpoint: str | Path, tokenizer: Any, template: str = "auto") -> str:
    """The prompt template to serve with: `template` when given; for `auto`, `chat` when the
    tokenizer has a chat template, else the `data.template` of the run folder the checkpoint
    sits in (`RUN/config.yaml`, as `r1lab demo` and `train` write it), else `r1_zero`."""
    if template != "auto":
        TEMPLATES.get(template)  # an unknown name fails here, listing the valid ones
        return template
    if getattr(tokenizer, "chat_template", None):
        return "chat"
    run_config = Path(checkpoint).resolve().parent / "config.yaml"
    if run_config.is_file():
        import yaml

        data = yaml.safe_load(run_config.read_text()) or {}
        name = (data.get("data") or {}).get("template")
        if name and name != "chat" and name in TEMPLATES:
            return name
    return "r1_zero"


def serve_template(checkpoint: str | Path, tokenizer: Any, template: str = "auto") -> dict[str, Any]:
    """The template record to build prompts with: the one the checkpoint was trained with
    (`r1lab_template.json`, system message included) unless `template` names another; for an
    older checkpoint, `resolve_template`'s choice, with r1lab's system message for `chat` only
    when the checkpoint sits in an r1lab run folder (a model r1lab never trained gets none)."""
    if template == "auto":
        saved = load_template(checkpoint)
        if saved is not None:
            return saved
    name = resolve_template(checkpoint, tokenizer, template)
    record = template_record(name, tokenizer)
    if name == "chat" and not (Path(checkpoint).resolve().parent / "config.yaml").is_file():
        record.pop("system", None)
    return record


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: the text ones, in order
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat-completions request that r1lab honours; others are ignored,
    except the ones it cannot honour (checked in `unsupported`)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=64)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop strings")
        return v

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for a request asking for something this server does not do."""
        extra = self.model_extra or {}
        for key in ("tools", "functions", "response_format"):
            if extra.get(key):
                return key, f"{key} is not supported by r1lab serve"
        if extra.get("logprobs"):
            return "logprobs", "logprobs are not supported by r1lab serve"
        if not any(m.role == "user" for m in self.messages):
            return "messages", "messages must contain at least one user message"
        return None


def _openai_error(status: int, message: str, param: str | None, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": None}})


class _Job:
    """One request's generation: its prompt, settings, and (when streaming) a step callback."""

    def __init__(self, ids: list[int], params, on_step=None) -> None:
        self.ids, self.params, self.on_step = ids, params, on_step
        self.done = threading.Event()
        self.texts: list[str] = []
        self.finish_reasons: list[str] = []
        self.completion_tokens = 0
        self.batch_prompts = 0  # how many prompts its decode batch had
        self.error: BaseException | None = None
        self.cancel = threading.Event()  # set when a streaming client goes away

    def wait(self) -> _Job:
        self.done.wait()
        return self


class Batcher:
    """Runs every generation on one thread (the model is not thread-safe). Requests with the
    same sampling settings and no seed that are waiting when a decode starts, or arrive within
    `window_s` of the first, are decoded as one batch of up to `max_prompts` prompts: on a CPU a
    decoding step for 16 prompts costs little more than for one, because it reads the same
    weights. Seeded requests run alone, so their samples do not depend on their neighbours."""

    def __init__(self, sampler, max_prompts: int = 16, window_s: float = 0.005) -> None:
        self.sampler, self.max_prompts, self.window_s = sampler, max(1, max_prompts), window_s
        self.pending: collections.deque[_Job] = collections.deque()
        self.cv = threading.Condition()
        self.stats = {"requests": 0, "cancelled": 0, "running": 0, "tokens": 0}
        threading.Thread(target=self._loop, name="r1lab-serve-batcher", daemon=True).start()

    def submit(self, job: _Job) -> _Job:
        with self.cv:
            self.pending.append(job)
            self.cv.notify()
        return job

    def _take(self) -> list[_Job]:
        with self.cv:
            while not self.pending:
                self.cv.wait()
            first = self.pending.popleft()
            batch = [first]
            if first.params.seed is not None:
                return batch
            deadline = time.monotonic() + self.window_s
            while True:
                for job in [j for j in self.pending if j.params == first.params]:
                    if len(batch) == self.max_prompts:
                        break
                    self.pending.remove(job)
                    batch.append(job)
                left = deadline - time.monotonic()
                if len(batch) == self.max_prompts or left <= 0:
                    return batch
                self.cv.wait(left)

    def _loop(self) -> None:
        while True:
            self._run(self._take())

    def _run(self, jobs: list[_Job]) -> None:
        """Decode `jobs` as one batch; each gets its rows' texts (and, streaming, its steps)."""
        n = jobs[0].params.n
        streaming = [j.on_step is not None for j in jobs]
        stopped: set[int] = set()
        live = [j for j in jobs if not j.cancel.is_set()]  # a client gone before its turn: skipped
        self.stats["cancelled"] += len(jobs) - len(live)
        for job in jobs:
            if job.cancel.is_set():
                job.done.set()
        if not live:
            return
        if len(live) < len(jobs):
            jobs, streaming = live, [j.on_step is not None for j in live]
        self.stats["requests"] += len(jobs)
        self.stats["running"] = len(jobs)

        def on_step(t: int, rows: list[int], tokens: list[int]) -> list[int]:
            for j, job in enumerate(jobs):
                if j not in stopped and job.cancel.is_set():
                    stopped.add(j)
                    self.stats["cancelled"] += 1
            per_job: dict[int, tuple[list[int], list[int]]] = {}
            for row, tok in zip(rows, tokens, strict=True):
                if streaming[row // n]:
                    local = per_job.setdefault(row // n, ([], []))
                    local[0].append(row % n)
                    local[1].append(tok)
            for j, (local_rows, toks) in per_job.items():
                if j not in stopped:
                    jobs[j].on_step(t, local_rows, toks)
            return [j * n + k for j in stopped for k in range(n)]

        try:
            out = self.sampler.generate([j.ids for j in jobs], jobs[0].params,
                                        on_step=on_step if any(streaming) else None)
            lengths = out.lengths.tolist()
            self.stats["tokens"] += int(sum(lengths))
            for j, job in enumerate(jobs):
                rows = slice(j * n, (j + 1) * n)
                job.texts, job.finish_reasons = out.texts[rows], out.finish_reasons[rows]
                job.completion_tokens = int(sum(lengths[rows]))
                job.batch_prompts = len(jobs)
        except Exception as exc:  # noqa: BLE001 - every request of the batch reports it
            for job in jobs:
                job.error = exc
        self.stats["running"] = 0
        for job in jobs:
            job.done.set()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def build_app(model, tokenizer, *, name: str = "r1lab", template: str | dict[str, Any] = "r1_zero",
              max_tokens: int = 1024, temperature: float = 0.6, top_p: float = 0.95,
              max_batch: int = 16, api_key: str | None = None, max_request_bytes: int = 1 << 20,
              max_concurrent: int = 64):
    """A FastAPI app serving `model` (defaults: the paper's sampling, T=0.6, top-p 0.95);
    concurrent requests are decoded together, up to `max_batch` prompts (1: one at a time).
    `template` is a template name or a saved record (`serve_template`). With `api_key`, every
    /v1 request needs `Authorization: Bearer KEY` (401 otherwise); bodies over
    `max_request_bytes` get a 413, requests past `max_concurrent` in flight a 429."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    from r1lab.rollout import SamplingParams
    from r1lab.rollout.hf import HFSampler

    record = template if isinstance(template, dict) else template_record(template, tokenizer)
    if not isinstance(template, dict) and record["template"] == "chat":
        record.pop("system", None)  # a bare name: the chat template over the client's messages
    context = getattr(model.config, "max_position_embeddings", None)
    batcher = Batcher(HFSampler(model, tokenizer), max_batch)
    created = int(time.time())
    app = FastAPI(title="r1lab", description="OpenAI-compatible chat server for reasoning models")
    app.add_middleware(Guard, api_key=api_key, max_request_bytes=max_request_bytes,
                       max_concurrent=max_concurrent)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if err.get("type") == "json_invalid":
            return _openai_error(400, f"the request body is not valid JSON ({err.get('msg')}, "
                                 f"position {loc[-1] if loc else '?'})", None)
        if param is None:  # not a JSON object at all (or not sent as JSON)
            return _openai_error(400, "the request body must be a JSON object sent with "
                                 f"Content-Type: application/json ({err.get('msg')})", None)
        return _openai_error(400, f"{param}: {err.get('msg')}", param)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", **batcher.stats}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "r1lab"}]}

    def prompt_text(req: ChatRequest) -> tuple[str, bool]:
        """(prompt, whether a template adds BOS): the chat template over the whole conversation
        (the run's system message first when the client sends none), else the template over
        the last user message: the prompt text the checkpoint was trained on."""
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        return saved_prompt(record, messages, tokenizer), record["template"] != "chat"

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest):
        problem = req.unsupported()
        if problem:
            return _openai_error(400, problem[1], problem[0])
        if req.model not in (None, "", name):
            return _openai_error(404, f"model {req.model!r} is not served here (this server has {name!r})",
                                 "model", "not_found_error")
        text, bos = prompt_text(req)
        ids = tokenizer(text, add_special_tokens=bos)["input_ids"]
        thinking = text.rstrip().endswith("<think>")  # the template opened the think block
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        new_tokens = req.max_completion_tokens or req.max_tokens or max_tokens
        if context and len(ids) + new_tokens > context:
            asked = req.max_completion_tokens or req.max_tokens
            if asked is not None:  # the client asked for more than fits
                param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
                return _openai_error(400, f"{param}: the prompt ({len(ids)} tokens) plus {asked} new tokens "
                                     f"exceeds the model's context of {context}", param)
            new_tokens = context - len(ids)  # the server's default: as much as fits
            if new_tokens < 1:
                return _openai_error(400, f"messages: the prompt ({len(ids)} tokens) fills the model's "
                                     f"context of {context}", "messages")
        params = SamplingParams(
            n=req.n, max_new_tokens=new_tokens,
            temperature=temperature if req.temperature is None else req.temperature,
            top_p=top_p if req.top_p is None else req.top_p, stop=stop, seed=req.seed)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(head, ids, params, thinking, usage), media_type="text/event-stream")
        job = batcher.submit(_Job(ids, params)).wait()
        if job.error is not None:
            exc = job.error
            return _openai_error(500, f"generation failed: {type(exc).__name__}: {exc}", None, "server_error")
        choices = []
        for i, (out, finish) in enumerate(zip(job.texts, job.finish_reasons, strict=True)):
            reasoning, content = split_reasoning(cut_at_stop(out, stop), thinking)
            choices.append({"index": i, "finish_reason": finish, "logprobs": None,
                            "message": {"role": "assistant", "content": content,
                                        "reasoning_content": reasoning}})
        body = {**head, "object": "chat.completion", "choices": choices,
                "usage": _usage(len(ids), job.completion_tokens)}
        return JSONResponse(body, headers={"x-r1lab-batch-prompts": str(job.batch_prompts)})

    async def _stream(head: dict, ids: list[int], params, thinking: bool, include_usage: bool):
        """Server-sent events as OpenAI streams them: a role chunk, content / reasoning_content
        deltas as tokens are decoded, a finish_reason chunk per choice, [usage], [DONE]. A
        client that disconnects cancels this generator, which stops its rows' decoding."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        put = lambda item: loop.call_soon_threadsafe(events.put_nowait, item)  # noqa: E731
        job = _Job(ids, params, on_step=lambda t, rows, toks: put(("step", rows, toks)))

        def produce() -> None:
            batcher.submit(job).wait()
            put(("error", job.error) if job.error is not None else ("done", job))

        def chunk(index: int, delta: dict, finish: str | None = None) -> str:
            body = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            return f"data: {json.dumps(body)}\n\n"

        threading.Thread(target=produce, name="r1lab-serve-stream", daemon=True).start()
        n = params.n
        splitters = [StreamSplitter(thinking, params.stop) for _ in range(n)]
        detok = [IncrementalDetokenizer(tokenizer) for _ in range(n)]

        def deltas(i: int, pair: tuple[str, str]) -> list[str]:
            return ([chunk(i, {"reasoning_content": pair[0]})] if pair[0] else []) + \
                   ([chunk(i, {"content": pair[1]})] if pair[1] else [])

        try:
            for i in range(n):
                yield chunk(i, {"role": "assistant", "content": ""})
            while True:
                kind, *item = await events.get()
                if kind == "step":
                    for row, token in zip(*item, strict=True):
                        for c in deltas(row, splitters[row].feed(detok[row].add(token))):
                            yield c
                elif kind == "error":
                    exc = item[0]
                    body = {"error": {"message": f"generation failed: {type(exc).__name__}: {exc}",
                                      "type": "server_error", "param": None, "code": None}}
                    yield f"data: {json.dumps(body)}\n\n"
                    break
                else:
                    done = item[0]
                    for i, (out, finish) in enumerate(zip(done.texts, done.finish_reasons, strict=True)):
                        for c in deltas(i, splitters[i].finish(out)):
                            yield c
                        yield chunk(i, {}, finish)
                    if include_usage:
                        body = {**head, "object": "chat.completion.chunk", "choices": [],
                                "usage": _usage(len(ids), done.completion_tokens)}
                        yield f"data: {json.dumps(body)}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()  # a no-op once the job is done; else its decoding stops

    return app


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
          template: str = "auto", max_tokens: int = 1024, temperature: float = 0.6, top_p: float = 0.95,
          device: str = "auto", threads: int | None = None, max_batch: int = 16, ready: Any = None,
          api_key: str | None = None, max_request_bytes: int = 1 << 20, max_concurrent: int = 64) -> None:
    """Load `checkpoint` (a local Hugging Face directory) and serve it until interrupted; see
    `build_app` for the limits. Listening beyond localhost without `api_key` is warned about."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError("r1lab serve needs fastapi and uvicorn: pip install 'r1lab[serve]'") from exc
    from r1lab.config import ModelConfig
    from r1lab.models import load_policy

    model, tokenizer = load_policy(ModelConfig(path=str(checkpoint), device=device, threads=threads))
    model.eval()
    record = serve_template(checkpoint, tokenizer, template)
    name = name or Path(checkpoint).resolve().name
    app = build_app(model, tokenizer, name=name, template=record, max_tokens=max_tokens,
                    temperature=temperature, top_p=top_p, max_batch=max_batch, api_key=api_key,
                    max_request_bytes=max_request_bytes, max_concurrent=max_concurrent)
    if ready is not None:
        ready(name, record["template"])
    uvicorn.run(app, host=host, port=port, log_level="warning")
