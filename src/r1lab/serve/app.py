"""The server behind `r1lab serve` (see the package docstring)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from r1lab.data.templates import TEMPLATES

_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """A completion -> (reasoning_content, content), DeepSeek's convention.

    The thinking is what lies inside `<think> </think>`; a completion with `</think>` but no
    `<think>` (chat templates that open the think block in the prompt) thinks up to it; an
    unclosed `<think>` (cut at the length limit) thinks to the end and has no answer yet. The
    answer is the rest, unwrapped from `<answer> </answer>` when it has those tags.

    >>> split_reasoning("<think>3+5=8</think><answer>8</answer>")
    ('3+5=8', '8')
    >>> split_reasoning("the answer is 8")
    (None, 'the answer is 8')
    >>> split_reasoning("3+5=8</think>\\n\\nIt is 8.")
    ('3+5=8', 'It is 8.')
    >>> split_reasoning("<think>3+5 is")
    ('3+5 is', '')
    """
    reasoning = None
    opened, closed = text.find("<think>"), text.find("</think>")
    if closed >= 0 and (opened < 0 or opened > closed):
        reasoning, text = text[:closed], text[closed + len("</think>"):]
    elif opened >= 0 and closed > opened:
        reasoning = text[opened + len("<think>"):closed]
        text = text[:opened] + text[closed + len("</think>"):]
    elif opened >= 0:
        reasoning, text = text[opened + len("<think>"):], text[:opened]
    answer = _ANSWER.search(text)
    content = answer.group(1) if answer else text
    return (reasoning.strip() if reasoning is not None else None), content.strip()


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

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop strings")
        return v

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for a request asking for something this server does not do."""
        if self.stream:
            return "stream", "streaming is not supported by r1lab serve yet; send stream: false"
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


def build_app(model, tokenizer, *, name: str = "r1lab", template: str = "r1_zero",
              max_tokens: int = 1024, temperature: float = 0.6, top_p: float = 0.95):
    """A FastAPI app serving `model` (defaults: the paper's sampling, T=0.6, top-p 0.95)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError

    from r1lab.rollout import SamplingParams
    from r1lab.rollout.hf import HFSampler

    template_fn = TEMPLATES.get(template)
    sampler = HFSampler(model, tokenizer)
    lock = threading.Lock()  # one generation at a time: the model and sampler are not thread-safe
    created = int(time.time())
    app = FastAPI(title="r1lab", description="OpenAI-compatible chat server for reasoning models")

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
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "r1lab"}]}

    def prompt_ids(req: ChatRequest) -> list[int]:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        if template == "chat":
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        return tokenizer(template_fn(question, tokenizer))["input_ids"]

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest):
        problem = req.unsupported()
        if problem:
            return _openai_error(400, problem[1], problem[0])
        if req.model not in (None, "", name):
            return _openai_error(404, f"model {req.model!r} is not served here (this server has {name!r})",
                                 "model", "not_found_error")
        ids = prompt_ids(req)
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        params = SamplingParams(
            n=req.n, max_new_tokens=req.max_completion_tokens or req.max_tokens or max_tokens,
            temperature=temperature if req.temperature is None else req.temperature,
            top_p=top_p if req.top_p is None else req.top_p, stop=stop, seed=req.seed)
        try:
            with lock:
                batch = sampler.generate([ids], params)
        except Exception as exc:  # noqa: BLE001 - reported to the client, the server stays up
            return _openai_error(500, f"generation failed: {type(exc).__name__}: {exc}", None, "server_error")
        choices = []
        for i, (text, finish) in enumerate(zip(batch.texts, batch.finish_reasons, strict=True)):
            reasoning, content = split_reasoning(text)
            choices.append({"index": i, "finish_reason": finish, "logprobs": None,
                            "message": {"role": "assistant", "content": content,
                                        "reasoning_content": reasoning}})
        completion_tokens = int(batch.lengths.sum())
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": name, "choices": choices,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                          "total_tokens": len(ids) + completion_tokens}}

    return app


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
          template: str = "auto", max_tokens: int = 1024, temperature: float = 0.6, top_p: float = 0.95,
          device: str = "auto", threads: int | None = None, ready: Any = None) -> None:
    """Load `checkpoint` (a local Hugging Face directory) and serve it until interrupted."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError("r1lab serve needs fastapi and uvicorn: pip install 'r1lab[serve]'") from exc
    from r1lab.config import ModelConfig
    from r1lab.models import load_policy

    model, tokenizer = load_policy(ModelConfig(path=str(checkpoint), device=device, threads=threads))
    model.eval()
    template = resolve_template(checkpoint, tokenizer, template)
    name = name or Path(checkpoint).resolve().name
    app = build_app(model, tokenizer, name=name, template=template, max_tokens=max_tokens,
                    temperature=temperature, top_p=top_p)
    if ready is not None:
        ready(name, template)
    uvicorn.run(app, host=host, port=port, log_level="warning")
