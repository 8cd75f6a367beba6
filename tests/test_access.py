"""Who gets into a Space with "Sign in with Hugging Face": the owner and the allow-list, nobody else.

The OAuth exchange itself needs huggingface.co; everything around it is tested offline: the
allow-list, the session check Gradio calls on every request, the sign-in page, and a running
app whose session is filled by a stand-in for Gradio's login routes.
"""

from __future__ import annotations

import time

import httpx
import pytest

from app.access import (account_names, allow_list, is_allowed, oauth_available, oauth_user, refused_file,
                        space_owner)

OWNER_ENV = {"SPACE_ID": "ada/modelforge", "SPACE_AUTHOR_NAME": "ada"}


def _info(user: str, orgs=(), expires_in: float = 3600) -> dict:
    return {"oauth_info": {"expires_at": time.time() + expires_in,
                           "userinfo": {"preferred_username": user,
                                        "orgs": [{"preferred_username": o} for o in orgs]}}}


def test_the_allow_list_is_the_owner_plus_the_configured_names():
    assert space_owner(OWNER_ENV) == "ada"
    assert space_owner({"SPACE_ID": "labs/modelforge"}) == "labs"
    assert allow_list(OWNER_ENV) == {"ada"}
    env = {**OWNER_ENV, "MODELFORGE_ALLOWED_USERS": " Bob, @carol ,,my-org "}
    assert allow_list(env) == {"ada", "bob", "carol", "my-org"}
    assert allow_list({}) == frozenset()


@pytest.mark.parametrize("session,expected", [
    (_info("ada"), "ada"),                                   # the owner
    (_info("ADA"), "ADA"),                                   # names compare case-insensitively
    (_info("bob"), "bob"),                                   # listed user
    (_info("dan", orgs=["my-org"]), "dan"),                  # member of a listed organisation
    (_info("eve"), None),                                    # signed in, not allowed
    (_info("eve", orgs=["other-org"]), None),
    (_info("ada", expires_in=-10), None),                    # expired session
    ({}, None), (None, None), ({"oauth_info": "junk"}, None),
    ({"oauth_info": {"userinfo": {"preferred_username": ""}}}, None),
])
def test_oauth_user_lets_in_only_allowed_accounts(session, expected):
    allowed = allow_list({**OWNER_ENV, "MODELFORGE_ALLOWED_USERS": "bob,my-org"})
    assert oauth_user(session, allowed) == expected


def test_an_empty_allow_list_lets_nobody_in():
    assert not is_allowed({"preferred_username": "ada"}, [])
    assert account_names({"preferred_username": "x", "orgs": [{"name": "o"}, "junk"]}) == ["x", "o"]


def test_oauth_needs_a_space_with_hf_oauth():
    assert not oauth_available({})
    assert not oauth_available({"SPACE_ID": "ada/x"})  # hf_oauth off: the password login
    assert not oauth_available({"OAUTH_CLIENT_ID": "x"})  # not a Space


def test_refused_file_accepts_only_this_apps_uploads(tmp_path):
    up = tmp_path / "up.json"
    up.write_text("[]")
    link = tmp_path / "link.json"
    link.symlink_to(up)
    uploads = {str(up)}
    assert refused_file({"data": [{"path": str(up)}]}, uploads) is None
    assert refused_file({"data": [{"path": "/etc/passwd"}]}, uploads) == "/etc/passwd"
    assert refused_file({"data": [{"path": str(link)}]}, uploads) == str(link)
    assert refused_file({"data": [{"path": 3}]}, uploads)
    assert refused_file({"data": [[{"x": {"path": "/x"}}]]}, uploads) == "/x"
    assert refused_file({"data": ["/etc/passwd", {"text": "hi"}]}, uploads) is None  # plain text is no file


@pytest.fixture(scope="module")
def oauth_app(tmp_path_factory, demo_model):
    """The app with OAuth (owner 'ada' + org 'my-org'); a stand-in login route fills the session."""
    import threading

    import uvicorn
    from starlette.responses import PlainTextResponse

    import gradio.oauth
    from app.services import build_services
    from app.ui import build_app
    from tests.helpers import free_port

    sessions: dict[str, dict] = {}

    class Sessions:  # a stand-in for Starlette's SessionMiddleware (itsdangerous is not installed)
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http":
                cookie = dict(scope.get("headers", [])).get(b"cookie", b"").decode()
                sid = cookie.partition("sid=")[2].split(";")[0]
                scope["session"] = sessions.setdefault(sid, {}) if sid else {}
            await self.app(scope, receive, send)

    def attach(app):
        async def login(request):
            name, org = request.path_params["name"], request.query_params.get("org", "")
            sessions[name + org] = _info(name, orgs=[org] if org else [])
            response = PlainTextResponse("ok")
            response.set_cookie("sid", name + org)
            return response

        app.add_route("/login/test/{name}", login)

        app.add_middleware(Sessions)

    mp = pytest.MonkeyPatch()
    mp.setattr(gradio.oauth, "attach_oauth", attach)
    services = build_services(f"sqlite:///{tmp_path_factory.mktemp('oauth') / 'records.db'}")
    blocks, app = build_app(services, restrict_paths=True,
                            oauth_allowed=allow_list({**OWNER_ENV, "MODELFORGE_ALLOWED_USERS": "my-org"}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)
    mp.undo()


def _session(url: str, name: str | None, org: str = "") -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30)
    if name:
        assert http.get(f"login/test/{name}", params={"org": org}).status_code == 200
    return http


@pytest.mark.parametrize("who,org,allowed", [(None, "", False), ("eve", "", False), ("eve", "other", False),
                                             ("ada", "", True), ("dan", "my-org", True)])
def test_a_running_oauth_app_admits_only_the_allow_list(oauth_app, who, org, allowed):
    http = _session(oauth_app, who, org)
    try:
        page = http.get("")
        api = http.post("gradio_api/call/list_models", json={"data": []})
        config = http.get("config")
        if allowed:
            assert page.status_code == 200 and "Sign in with Hugging Face" not in page.text
            assert api.status_code == 200 and config.status_code == 200
        else:
            assert page.status_code == 401
            assert ("Sign in with Hugging Face" in page.text) if who is None else ("MODELFORGE_ALLOWED_USERS" in page.text)
            assert api.status_code == 401 and config.status_code == 401
        assert http.get("api/health").status_code == 200  # the health check stays open

    finally:
        http.close()
