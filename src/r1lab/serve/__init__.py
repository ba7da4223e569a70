"""`r1lab serve CHECKPOINT`: an OpenAI-compatible chat server for a reasoning checkpoint.

`POST /v1/chat/completions` takes the OpenAI request (`messages`, `temperature`, `top_p`,
`max_tokens` / `max_completion_tokens`, `n`, `stop`, `seed`, `stream`, `stream_options`) and
answers as DeepSeek's API does
for its reasoner: the thinking (inside `<think> </think>`) goes to `message.reasoning_content`,
the answer to `message.content` (unwrapped from `<answer> </answer>` when the model uses the R1
template), with `usage` token counts and a `finish_reason` per choice. `GET /v1/models` lists
the one model, `GET /health` says it is up. Any OpenAI client works against it
(`base_url="http://HOST:PORT/v1"`).

With `stream: true` the answer comes as server-sent events, token by token:
`delta.reasoning_content` while the model thinks, `delta.content` after (text that could still
turn into a tag or a stop string is held back until it cannot, so what is sent is never taken
back). A stop string is left out of the answer, as in OpenAI's API.

Generation runs on one thread with r1lab's own KV-cached sampler (the model is not
thread-safe); concurrent requests with the same sampling settings are decoded as one batch
(`Batcher`; seeded requests alone). Tools and logprobs are not supported: such a request gets a
400 that says so. A bad request gets a 400 in OpenAI's error format naming the field.

Needs the `serve` extra: `pip install 'r1lab[serve]'` (fastapi, uvicorn).
"""

from r1lab.serve.app import build_app, resolve_template, serve, split_reasoning

__all__ = ["build_app", "resolve_template", "serve", "split_reasoning"]
