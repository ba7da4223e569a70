"""The gate in front of `r1lab serve`'s API: API key, request size, requests in flight."""

from __future__ import annotations

import hmac
import json


class Guard:
    """ASGI middleware in front of the API: the API key (`Authorization: Bearer KEY`, else 401,
    as vLLM's `--api-key`), the request size (413) and the number of requests in flight (429;
    a stream counts until it ends). `/health` is always open."""

    def __init__(self, app, api_key: str | None = None, max_request_bytes: int = 1 << 20,
                 max_concurrent: int = 64) -> None:
        self.app, self.api_key = app, api_key
        self.max_bytes, self.max_concurrent = max_request_bytes, max_concurrent
        self.active = 0

    @staticmethod
    async def _reject(send, status: int, message: str, kind: str, extra=()) -> None:
        body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *extra]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None:
            got = headers.get(b"authorization", b"")
            if not hmac.compare_digest(got, b"Bearer " + self.api_key.encode()):
                return await self._reject(send, 401, "missing or wrong API key (send the header "
                                          "'Authorization: Bearer <key>')", "authentication_error",
                                          [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send, 413, f"the request body is {int(length)} bytes, over "
                                      f"this server's limit of {self.max_bytes}", "invalid_request_error")
        if self.active >= self.max_concurrent:
            return await self._reject(send, 429, f"the server is at its limit of {self.max_concurrent} "
                                      "requests in flight; retry later", "rate_limit_error",
                                      [(b"retry-after", b"1")])
        self.active += 1
        try:
            body, more = b"", True
            while more:  # a body sent without a length (chunked) is counted as it comes
                msg = await receive()
                if msg["type"] != "http.request":
                    return
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(body) > self.max_bytes:
                    return await self._reject(send, 413, f"the request body is over this server's "
                                              f"limit of {self.max_bytes} bytes", "invalid_request_error")
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # http.disconnect, which a stream listens for

            await self.app(scope, replay, send)
        finally:
            self.active -= 1
