"""HTTP for console tests: twisted.web's Agent against an MTA started in this process."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import attrs
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from mqtwisted.testing import RunningMTA, start_mta


@attrs.define
class Answer:
    status: int
    headers: Headers
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


@attrs.define
class Client:
    base: str
    cookie: str | None = None
    csrf: str | None = None
    token: str | None = None
    #: the client address to connect from (another loopback address is another client IP)
    bind: str | None = None

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None, content_type: str | None = None) -> Answer:
        from twisted.internet import reactor

        hdrs = dict(headers or {})
        if self.cookie:
            hdrs.setdefault("Cookie", self.cookie)
        if self.token:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        if self.csrf and method not in ("GET", "HEAD"):
            hdrs.setdefault("X-CSRF-Token", self.csrf)
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if content_type:
            hdrs["Content-Type"] = content_type
        producer = FileBodyProducer(BytesIO(data)) if data is not None else None
        agent = Agent(reactor, bindAddress=(self.bind, 0) if self.bind else None)
        response = await agent.request(
            method.encode(), (self.base + path).encode(), Headers({k: [v] for k, v in hdrs.items()}), producer)
        content = await readBody(response) if method != "HEAD" else b""
        return Answer(response.code, response.headers, content)

    async def login(self, user: str, password: str) -> Answer:
        answer = await self.call("POST", "/login", raw=f"user={user}&password={password}".encode(),
                                 content_type="application/x-www-form-urlencoded")
        cookie = answer.header("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";")[0]
            session = await self.call("GET", "/console/session")
            self.csrf = session.json["csrf"]
        return answer


async def console_mta(data_dir: str, **options: Any) -> tuple[RunningMTA, Client]:
    mta = await start_mta(data_dir, www_port="0", **options)
    return mta, Client(f"http://127.0.0.1:{mta.service.web.listening_port}")
