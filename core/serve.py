"""``modelforge serve MODEL``: a model's GGUF export behind an OpenAI-compatible API.

The server is llama-cpp-python's (``llama_cpp.server``: ``/v1/chat/completions`` streaming and
not, ``/v1/completions``, ``/v1/models``), with the model's own chat template read from the GGUF.
ModelForge adds two things in front of it:

- every request's ``max_tokens`` is bounded (:data:`DEFAULT_MAX_TOKENS`, ``--max-tokens``): a
  request that asks for more, or for no limit, gets the bound, so one client cannot keep the
  machine busy for the whole context window;
- the same rule as the app for who may connect: loopback by default; on any other interface an
  API key is required (``--api-key`` or ``MODELFORGE_API_KEY``; clients send it as the OpenAI key)
  unless ``--no-auth`` says the owner really wants it open.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ModelForgeError

DEFAULT_MAX_TOKENS = 512  # higher: longer answers, a busier machine per request
DEFAULT_CTX = 2048        # the context window llama.cpp allocates (prompt + answer)


@dataclass
class Served:
    gguf: Path
    lora: Path | None
    name: str
    export: dict


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def find_gguf(store, model_key: str) -> Served:
    """The GGUF to serve: a .gguf path, or the newest GGUF export of a model record.

    Raises:
        NotFoundError: no such model. ModelForgeError: the model has no GGUF export yet.
    """
    p = Path(model_key).expanduser()
    if p.suffix == ".gguf" and p.is_file():
        meta = p.parent / "export.json"
        return Served(p, None, p.stem, json.loads(meta.read_text()) if meta.is_file() else {})
    from core.export import exports_root

    rec = store.get_model(model_key)
    candidates = []
    for meta in (exports_root() / rec.id).glob("*/export.json"):
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info.get("format") in ("gguf", "lora-gguf"):
            candidates.append((meta.stat().st_mtime, meta.parent, info))
    if not candidates:
        raise ModelForgeError(f"{rec.name} has no GGUF export to serve",
                              f"export one first: modelforge export {rec.id} --format gguf")
    _, folder, info = max(candidates, key=lambda c: c[0])
    files = [folder / f for f in info.get("files", []) if f.endswith(".gguf")]
    if info["format"] == "lora-gguf":
        base = next(f for f in files if "-base-" in f.name)
        lora = next(f for f in files if f is not base)
        return Served(base, lora, rec.name, info)
    return Served(files[0], None, rec.name, info)


def check_access(host: str, api_key: str | None, no_auth: bool) -> str | None:
    """The API key to require (None: open). Raises ModelForgeError for an open public server."""
    key = api_key or os.environ.get("MODELFORGE_API_KEY") or None
    if not key and not is_loopback(host) and not no_auth:
        raise ModelForgeError(
            f"refusing to serve on {host} without an API key: anyone who can reach this machine could use it",
            "pass --api-key KEY (or set MODELFORGE_API_KEY; clients send it as their OpenAI key), "
            "serve on 127.0.0.1, or --no-auth to allow anyone")
    return key


class CapMaxTokens:
    """ASGI middleware: bound ``max_tokens`` of every completion request to ``cap``."""

    def __init__(self, app: Any, cap: int):
        self.app, self.cap = app, cap

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith("completions"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        try:
            data = json.loads(body or b"{}")
            if isinstance(data, dict):
                asked = data.pop("max_completion_tokens", None) or data.get("max_tokens")
                data["max_tokens"] = asked if isinstance(asked, int) and 0 < asked <= self.cap else self.cap
                body = json.dumps(data).encode()
        except ValueError:
            pass  # not JSON: the server answers with its own error
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        scope = dict(scope, headers=headers)
        done = False

        async def replay():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def build_app(served: Served, *, api_key: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
              n_ctx: int = DEFAULT_CTX, threads: int | None = None):
    """llama-cpp-python's OpenAI-compatible app for ``served``, with the max_tokens bound.

    Raises:
        NotAvailableError: llama-cpp-python's server is not installed (the export extra).
    """
    from core.export.llamacpp import require

    require(gguf=True)
    try:
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as exc:
        from core.errors import NotAvailableError

        raise NotAvailableError(f"llama-cpp-python's server is not installed ({exc})",
                                "pip install -e '.[export]'") from None
    model = ModelSettings(model=str(served.gguf), model_alias=served.name, n_ctx=n_ctx,
                          n_threads=threads or max(1, min(4, os.cpu_count() or 1)),
                          lora_path=str(served.lora) if served.lora else None, verbose=False)
    server = ServerSettings(api_key=api_key)
    return CapMaxTokens(create_app(server_settings=server, model_settings=[model]), max_tokens)


def serve(served: Served, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None,
          max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
    """Serve until interrupted (uvicorn)."""
    import uvicorn

    app = build_app(served, api_key=api_key, max_tokens=max_tokens)
    uvicorn.run(app, host=host, port=port, log_level="warning")
