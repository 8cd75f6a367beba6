"""Who may use a public app, and which files a request may name.

Two guards, both in front of Gradio so that they hold whatever Gradio's mounting skips:

- :class:`RequestGuard` (an ASGI middleware) reads every JSON request to the app before Gradio
  sees it. In a public app, a ``FileData`` (any object with a ``"path"``) must name a file that
  was uploaded to *this* app through its upload route (Gradio records those in
  ``blocks.upload_file_set``); anything else (a server path, ``../``, ``~``, a symlink, a file
  of Gradio's temp folder this app did not receive, a URL for the server to fetch) is refused
  with HTTP 403 before Gradio copies or reads it. In every mode it refuses JSON bodies over
  ``MODELFORGE_MAX_REQUEST_MB`` (default 16) with HTTP 413.
- "Sign in with Hugging Face" on a Space (``hf_oauth: true``): :func:`oauth_user` turns the
  session Gradio's OAuth routes keep into a user name when the account (or one of its
  organisations) is on the allow-list: the Space's owner plus ``MODELFORGE_ALLOWED_USERS``
  (comma-separated users or organisations). Everyone else gets the sign-in page.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Iterable, Mapping

log = logging.getLogger("modelforge.access")

DEFAULT_MAX_REQUEST_MB = 16.0


# -- the allow-list ---------------------------------------------------------------------------------
def space_owner(env: Mapping[str, str] | None = None) -> str | None:
    """The Space's owner (a user or an organisation): ``SPACE_AUTHOR_NAME``, else ``SPACE_ID``'s first part."""
    env = os.environ if env is None else env
    owner = (env.get("SPACE_AUTHOR_NAME") or "").strip()
    if not owner and "/" in (env.get("SPACE_ID") or ""):
        owner = env["SPACE_ID"].split("/", 1)[0].strip()
    return owner or None


def allow_list(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Lower-cased names allowed in: the Space's owner plus ``MODELFORGE_ALLOWED_USERS``."""
    env = os.environ if env is None else env
    names = {n.strip().lstrip("@").lower() for n in (env.get("MODELFORGE_ALLOWED_USERS") or "").split(",")}
    owner = space_owner(env)
    if owner:
        names.add(owner.lower())
    names.discard("")
    return frozenset(names)


def account_names(userinfo: Mapping[str, Any] | None) -> list[str]:
    """The user's name followed by the names of their organisations (from the OAuth user info)."""
    if not isinstance(userinfo, Mapping):
        return []
    names = [str(userinfo.get("preferred_username") or "")]
    for org in userinfo.get("orgs") or []:
        if isinstance(org, Mapping):
            names.append(str(org.get("preferred_username") or org.get("name") or ""))
    return [n for n in names if n]


def is_allowed(userinfo: Mapping[str, Any] | None, allowed: Iterable[str]) -> bool:
    """True when the signed-in account, or an organisation it belongs to, is on ``allowed``."""
    allowed = {a.lower() for a in allowed}
    return bool(allowed) and any(n.lower() in allowed for n in account_names(userinfo))


def oauth_user(session: Mapping[str, Any] | None, allowed: Iterable[str],
               now: float | None = None) -> str | None:
    """The user name of a signed-in, allowed, unexpired OAuth session; None otherwise."""
    info = (session or {}).get("oauth_info") if isinstance(session, Mapping) else None
    if not isinstance(info, Mapping):
        return None
    expires = info.get("expires_at")
    if isinstance(expires, (int, float)) and expires < (time.time() if now is None else now):
        return None
    userinfo = info.get("userinfo")
    if not is_allowed(userinfo, allowed):
        return None
    return account_names(userinfo)[0]


def oauth_available(env: Mapping[str, str] | None = None) -> bool:
    """A Space with ``hf_oauth: true`` (the platform sets OAUTH_CLIENT_ID) and authlib installed."""
    env = os.environ if env is None else env
    if not (env.get("SPACE_ID") and env.get("OAUTH_CLIENT_ID")):
        return False
    try:
        import authlib  # noqa: F401 - Gradio's OAuth routes need it (gradio[oauth])
    except ImportError:
        log.warning("hf_oauth is on but authlib is missing: using the password login instead")
        return False
    return True


def oauth_dependency(allowed: Iterable[str]) -> Callable[[Any], str | None]:
    """Gradio's ``auth_dependency``: the allowed user of a request, or None (HTTP 401)."""
    allowed = frozenset(a.lower() for a in allowed)

    def dependency(request: Any) -> str | None:
        session = request.scope.get("session") if hasattr(request, "scope") else None
        return oauth_user(session, allowed)

    return dependency


def signin_page(user: str | None, allowed: Iterable[str]) -> str:
    """The page a visitor without an allowed session sees."""
    if user:
        body = (f"<p>You are signed in as <b>{_html(user)}</b>, but this Space lets in only its owner and the "
                "accounts its owner listed. Ask the owner to add you to <code>MODELFORGE_ALLOWED_USERS</code>.</p>"
                "<p><a href='/logout'>Sign out</a></p>")
    else:
        body = ("<p>This Space trains models on its owner's hardware: sign in to continue.</p>"
                "<p><a class='btn' href='/login/huggingface?_target_url=/'>Sign in with Hugging Face</a></p>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>ModelForge: sign in</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem}"
            ".btn{display:inline-block;padding:.6rem 1rem;border-radius:.5rem;background:#4f46e5;color:#fff;"
            "text-decoration:none}</style></head><body><h1>ModelForge</h1>" + body + "</body></html>")


def _html(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&#39;").replace('"', "&quot;"))


# -- requests ---------------------------------------------------------------------------------------
def max_request_bytes() -> int:
    raw = os.environ.get("MODELFORGE_MAX_REQUEST_MB", "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_REQUEST_MB
    except ValueError:
        mb = DEFAULT_MAX_REQUEST_MB
    return int(mb * 2**20) if mb > 0 else DEFAULT_MAX_REQUEST_MB * 2**20


def file_refs(data: Any, depth: int = 0) -> Iterable[Any]:
    """Every value of a ``"path"`` key in a JSON document (FileData and anything shaped like it)."""
    if depth > 64:
        yield "<nested too deep>"
        return
    if isinstance(data, dict):
        if "path" in data:
            yield data["path"]
        for v in data.values():
            yield from file_refs(v, depth + 1)
    elif isinstance(data, list):
        for v in data:
            yield from file_refs(v, depth + 1)


def refused_file(data: Any, uploaded: set[str]) -> str | None:
    """The first file reference in ``data`` that is not one of this app's uploads (None: all fine)."""
    known = None
    for ref in file_refs(data):
        if not isinstance(ref, str) or not ref:
            return "a file reference that is not a path"
        if ref in uploaded:
            continue
        if known is None:
            known = {os.path.realpath(p) for p in uploaded}
        try:
            if os.path.realpath(ref) in known and not os.path.islink(ref):
                continue
        except (OSError, ValueError):
            pass
        return ref
    return None


class RequestGuard:
    """ASGI middleware: bounded JSON bodies everywhere; in a public app, files only from this app's uploads.

    Args:
        app: the ASGI app it wraps.
        uploads: returns the set of paths this app's upload route produced (Gradio's
            ``blocks.upload_file_set``).
        restrict_files: True in a public app.
        served: in a public app, the files of Gradio's temp folder this app made or received
            (uploads and its components' caches): the only ones of that folder it serves.
        temp_folder: Gradio's temp folder.
        signin: in an OAuth app, ``(dependency, allowed)``: a page request without an allowed
            session gets the sign-in page instead of Gradio's 401.
    """

    def __init__(self, app: Any, uploads: Callable[[], set[str]], restrict_files: bool,
                 signin: tuple[Callable, frozenset[str]] | None = None,
                 served: Callable[[], Iterable[str]] = lambda: (), temp_folder: str | None = None):
        self.app = app
        self.uploads = uploads
        self.served = served
        self.temp_folder = temp_folder
        self.restrict_files = restrict_files
        self.signin = signin

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.signin and scope["method"] == "GET" and scope["path"] in ("/", "/signin"):
            page = self._signin_page(scope)
            if page is not None:
                return await _respond(send, 200 if scope["path"] == "/signin" else 401, page, "text/html")
        if self.restrict_files and scope["method"] in ("GET", "HEAD") and "/file=" in scope["path"]:
            target = scope["path"].split("/file=", 1)[1]
            if not self._may_serve(target):
                return await _respond(send, 403, json.dumps({"detail": "file not served by this app"}),
                                      "application/json")
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if "multipart/form-data" in headers.get("content-type", ""):
            return await self.app(scope, receive, send)  # uploads: Gradio's max_file_size bounds them
        limit = max_request_bytes()
        try:
            if int(headers.get("content-length") or 0) > limit:
                return await _too_large(send, limit)
        except ValueError:
            pass
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _too_large(send, limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if self.restrict_files and body:
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            bad = refused_file(data, self.uploads()) if data is not None else None
            if bad is not None:
                shown = bad if len(bad) <= 120 else bad[:120] + "…"
                log.warning("refused a request naming a file that was not uploaded to this app: %r", shown)
                detail = (f"refused: {shown!r} is not a file you uploaded to this app. A public app reads "
                          "only files uploaded through it (gradio_client: handle_file(path)).")
                return await _respond(send, 403, json.dumps({"detail": detail, "error": detail}),
                                      "application/json")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then: the client's disconnect, for streaming responses

        return await self.app(scope, replay, send)

    def _may_serve(self, target: str) -> bool:
        """Gradio serves any file of its temp folder to any client; a public app only its own."""
        if self.temp_folder is None or "://" in target:
            return True
        try:
            real = os.path.realpath(target)
        except (OSError, ValueError):
            return False
        root = os.path.realpath(self.temp_folder)
        if real != root and not real.startswith(root + os.sep):
            return True  # elsewhere Gradio's own rules apply (allowed_paths, its static files)
        return any(real == os.path.realpath(p) for p in self.served())

    def _signin_page(self, scope) -> str | None:
        from starlette.requests import Request

        dependency, allowed = self.signin
        request = Request(scope)
        if dependency(request) is not None:
            return None
        session = scope.get("session") or {}
        info = session.get("oauth_info") if isinstance(session, Mapping) else None
        names = account_names(info.get("userinfo")) if isinstance(info, Mapping) else []
        return signin_page(names[0] if names else None, allowed)


async def _too_large(send, limit: int) -> None:
    detail = (f"request body over {limit / 2**20:g} MB refused (MODELFORGE_MAX_REQUEST_MB); "
              "send data files as uploads")
    await _respond(send, 413, json.dumps({"detail": detail, "error": detail}), "application/json")


async def _respond(send, status: int, text: str, ctype: str) -> None:
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", f"{ctype}; charset=utf-8".encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
