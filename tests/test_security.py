"""Security: no stranger in a shared app, no token on disk, no code or file outside what was asked.

- A share link or a Space needs a login unless explicitly opened; with a login, every named API
  endpoint (and uploads, and the config) answers 401 to a client without credentials.
- A Hub token given to push_to_hub never reaches the database, the logs, the run folders or
  what the page and the API get back.
- ``trust_remote_code`` is off and weights load from safetensors unless the user says so.
- Deleting or exporting a model never touches a path outside the data folder, nor the data
  folder itself, whatever the record says.
- Uploads have a size limit (MODELFORGE_MAX_UPLOAD_MB) enforced by Gradio and by the handler.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import httpx
import pytest

from components.common import AppContext
from core.errors import ModelForgeError, OfflineError
from core.jobs import JobManager
from core.paths import home
from core.records import ModelRecord, RecordStore, new_id
from tests.helpers import free_port

FAKE_TOKEN = "hf_FAKEtokenNEVERtoBEstored0123456789abcd"
USER, PASSWORD = "ada", "a-long-password-42"


def _add_model(store: RecordStore, path: Path, name: str = "m1", model_id: str | None = None) -> str:
    run = store.create_run(name, {})
    model_id = model_id or new_id("model")
    store.finish_run(run.id, "completed", model=ModelRecord(
        id=model_id, name=name, base_model="demo", task="text-generation", strategy="sft",
        provider="huggingface", path=str(path), run_id=run.id))
    return model_id


@pytest.fixture()
def ctx(tmp_path):
    store = RecordStore(f"sqlite:///{tmp_path / 'sec.db'}")
    return AppContext(store=store, jobs=JobManager(store))


# -- login ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def locked_app(tmp_path_factory, demo_model):
    """The app with a login and a 1 MB upload limit, its store, and a model in the data folder."""
    from app.services import build_services
    from app.ui import launch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELFORGE_MAX_UPLOAD_MB", "1")
        services = build_services(f"sqlite:///{tmp_path_factory.mktemp('secapi') / 'records.db'}")
        running = launch(host="127.0.0.1", port=free_port(), block=False, services=services,
                         auth=f"{USER}:{PASSWORD}")
    folder = home() / "runs" / "sec-run" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    model_id = _add_model(services.store, folder, name="secret-model")
    yield running.url, services.store, model_id
    running.close()


@pytest.fixture(scope="module")
def authed(locked_app):
    from gradio_client import Client

    client = Client(locked_app[0], auth=(USER, PASSWORD), verbose=False)
    yield client
    client.close()


def test_named_endpoints_refuse_a_client_without_login(locked_app, authed):
    from gradio_client import Client

    url = locked_app[0]
    with pytest.raises(Exception, match="(?i)credentials|login|401"):
        Client(url, verbose=False)
    with pytest.raises(Exception, match="(?i)credentials|login|401|invalid"):
        Client(url, auth=(USER, "wrong-password"), verbose=False)
    names = sorted(authed.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/start_training", "/training_status", "/push_to_hub", "/delete_model", "/validate_dataset"} <= set(names)
    with httpx.Client(base_url=url, timeout=20) as http:
        for name in names:
            r = http.post(f"gradio_api/call{name}", json={"data": []})
            assert r.status_code == 401, (name, r.status_code, r.text[:200])
        for path in ("config", "gradio_api/info", "gradio_api/queue/status"):
            assert http.get(path).status_code == 401, path
        assert http.post("gradio_api/upload", files={"files": ("a.json", b"[]")}).status_code == 401
        # The health check stays open (a Space's probe has no password) and carries no user data.
        health = http.get("api/health").json()
        assert health["status"] == "ok" and "secret-model" not in json.dumps(health)


def test_the_same_endpoints_work_with_the_login(authed, locked_app):
    status = authed.predict(api_name="/training_status")
    assert status["status"] in ("none", "completed", "failed", "cancelled")
    assert locked_app[2] in [m["id"] for m in authed.predict(api_name="/list_models")]


def test_share_and_space_refuse_to_start_without_a_login(monkeypatch, capsys):
    from app.main import main
    from app.ui import launch

    port = free_port()
    monkeypatch.delenv("MODELFORGE_AUTH", raising=False)
    with pytest.raises(ModelForgeError, match="without a login"):
        launch(port=port, share=True, block=False)
    monkeypatch.setenv("SPACE_ID", "someone/modelforge")
    with pytest.raises(ModelForgeError, match="Hugging Face Space without a login"):
        launch(port=port, block=False)
    assert main(["ui", "--port", str(port)]) == 2
    assert "--auth" in capsys.readouterr().err  # the message says how to add a login
    with socket.socket() as s:  # nothing was served on the way
        s.bind(("127.0.0.1", port))


def test_a_space_with_a_login_secret_asks_for_it(monkeypatch):
    from app.ui import resolve_auth

    monkeypatch.setenv("SPACE_ID", "someone/modelforge")
    monkeypatch.setenv("MODELFORGE_AUTH", f"{USER}:{PASSWORD}")
    assert resolve_auth() == (USER, PASSWORD)
    monkeypatch.delenv("MODELFORGE_AUTH")
    assert resolve_auth(no_auth=True) is None  # explicitly opened by its owner
    with pytest.raises(ModelForgeError, match="USER:PASS"):
        resolve_auth(auth="no-colon")


# -- the hub token --------------------------------------------------------------------------------------------
def _grep_home_for_token() -> list[str]:
    hits = []
    for p in home().rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if FAKE_TOKEN.encode() in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


def test_push_token_offline_is_refused_and_never_kept(ctx, caplog):
    from components.models_tab import push_to_hub

    folder = home() / "runs" / "push-offline" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    model_id = _add_model(ctx.store, folder)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(OfflineError) as exc:
        push_to_hub(ctx, model_id, "me/repo", FAKE_TOKEN, True)
    assert FAKE_TOKEN not in str(exc.value) and FAKE_TOKEN not in caplog.text
    db = Path(ctx.store.sqlite_path())
    for f in db.parent.glob(db.name + "*"):  # the file, its -wal and -shm
        assert FAKE_TOKEN.encode() not in f.read_bytes(), f
    assert _grep_home_for_token() == []


def test_push_token_in_a_hub_error_is_masked(ctx, caplog, monkeypatch):
    """The hub is reachable but refuses the token and echoes it: the user sees ***, logs see nothing."""
    import huggingface_hub

    import core.models as hf
    from components.models_tab import push_to_hub

    class RefusingApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, *args, **kwargs):
            raise RuntimeError(f"401 Client Error: Invalid token '{self.token}' for url https://huggingface.co/api")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", RefusingApi)
    folder = home() / "runs" / "push-refused" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    model_id = _add_model(ctx.store, folder)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelForgeError) as exc:
        push_to_hub(ctx, model_id, "me/repo", f"  {FAKE_TOKEN}  ", True)
    assert "***" in str(exc.value) and FAKE_TOKEN not in str(exc.value)
    assert FAKE_TOKEN not in caplog.text
    assert _grep_home_for_token() == []


def test_push_token_through_the_api_is_never_written(locked_app, authed):
    from gradio_client.exceptions import AppError

    url, store, model_id = locked_app
    with pytest.raises(AppError) as exc:
        authed.predict(model_id=model_id, repo_id="me/repo", token=FAKE_TOKEN, private=True, api_name="/push_to_hub")
    assert FAKE_TOKEN not in str(exc.value)
    answers = [authed.predict(api_name="/list_models"), authed.predict(api_name="/list_runs"),
               authed.predict(model_id=model_id, api_name="/model_details"),
               authed.predict(api_name="/training_status")]
    assert FAKE_TOKEN not in json.dumps(answers, default=str)
    page = httpx.get(url, cookies=authed.cookies, timeout=20).text
    assert FAKE_TOKEN not in page
    db = Path(store.sqlite_path())
    for f in db.parent.glob(db.name + "*"):
        assert FAKE_TOKEN.encode() not in f.read_bytes(), f
    assert _grep_home_for_token() == []


def test_the_push_button_clears_the_token_box(ctx, monkeypatch):
    """The page's handler returns an empty token value after a push (and a .then clears it after an error)."""
    import components.models_tab as models_tab
    from app.ui import build_blocks

    blocks = build_blocks(ctx)
    push = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "btn-push")
    token_box = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "hub-token")
    fns = [f for f in blocks.fns.values() if any(t[0] == push._id for t in f.targets)]
    assert len(fns) == 1 and token_box in fns[0].outputs
    monkeypatch.setattr(models_tab, "push_to_hub", lambda *a, **k: "Pushed m1")
    message, token_after = fns[0].fn("model-x", "me/repo", FAKE_TOKEN, True)
    assert message.endswith("Pushed m1") and FAKE_TOKEN not in message and token_after == ""
    follow_up = [f for f in blocks.fns.values() if token_box in f.outputs and f is not fns[0]]
    assert any(f.fn() == "" for f in follow_up if not f.inputs)


# -- remote code and weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize("trust", [False, True])
def test_provider_loads_without_remote_code_and_from_safetensors(demo_model, monkeypatch, trust):
    import transformers

    from core.config import RunConfig
    from core.providers.huggingface import HuggingFaceProvider

    calls: list[tuple[str, dict]] = []
    real = {n: getattr(transformers, n).from_pretrained for n in ("AutoTokenizer", "AutoModelForCausalLM", "AutoConfig")}

    def spy(name):
        def from_pretrained(*args, **kwargs):
            calls.append((name, dict(kwargs)))
            return real[name](*args, **kwargs)
        return from_pretrained

    for name in real:
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", spy(name))
    config = RunConfig(model=str(demo_model)) if not trust else RunConfig(model=str(demo_model), trust_remote_code=True)
    assert RunConfig().trust_remote_code is False  # off unless the user turns it on
    HuggingFaceProvider().load(config)
    by_name = {n: kw for n, kw in calls}
    assert by_name["AutoModelForCausalLM"]["trust_remote_code"] is trust
    assert by_name["AutoModelForCausalLM"]["use_safetensors"] is (None if trust else True)
    assert by_name["AutoTokenizer"]["trust_remote_code"] is trust
    assert all(kw.get("trust_remote_code", False) is trust for _, kw in calls)


# -- deleting and exporting stay inside the data folder ---------------------------------------------------------
@pytest.fixture()
def outside(tmp_path):
    victim = tmp_path / "outside" / "precious"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("mine")
    return victim


@pytest.mark.parametrize("where", ["outside", "home", "runs", "dotdot", "symlink-out"])
def test_delete_refuses_paths_outside_or_at_the_top_of_the_data_folder(ctx, outside, where):
    from components.models_tab import delete_model

    root = home()
    link = root / "runs" / "innocent-looking"
    path = {"outside": outside, "home": root, "runs": root / "runs",
            "dotdot": root / "runs" / os.path.relpath(outside, root / "runs"), "symlink-out": link}[where]
    if where == "symlink-out":
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(outside, target_is_directory=True)
    before = sorted(str(p) for p in root.iterdir())
    model_id = _add_model(ctx.store, path)
    with pytest.raises(ModelForgeError, match="refusing to touch"):
        delete_model(ctx, model_id, confirm=True)
    assert (outside / "keep.txt").read_text() == "mine"
    assert sorted(str(p) for p in root.iterdir()) == before and (root / "runs").is_dir()
    assert ctx.store.get_model(model_id)  # nothing deleted, not even the record
    if where == "symlink-out":
        link.unlink()


def test_delete_with_a_hostile_id_cannot_remove_the_exports_folder(ctx, outside):
    from components.models_tab import delete_model, exports_dir

    folder = home() / "runs" / "dotdot-id" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (exports_dir() / "someone-elses-export").mkdir(parents=True, exist_ok=True)
    model_id = _add_model(ctx.store, folder, model_id="..")
    with pytest.raises(ModelForgeError, match="refusing to touch"):
        delete_model(ctx, model_id, confirm=True)
    assert folder.exists() and (exports_dir() / "someone-elses-export").exists() and home().exists()


def test_delete_inside_home_does_not_follow_links_out(ctx, outside):
    from components.models_tab import delete_model

    folder = home() / "runs" / "with-a-link" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    (folder / "escape").symlink_to(outside, target_is_directory=True)
    model_id = _add_model(ctx.store, folder)
    assert "Deleted" in delete_model(ctx, model_id, confirm=True)
    assert not folder.exists()
    assert (outside / "keep.txt").read_text() == "mine"  # the link went, not what it points at


@pytest.mark.parametrize("model_id,name", [("../../../x", "m"), ("model-ok", "../../../../escape/evil")])
def test_merge_export_stays_inside_the_exports_folder(ctx, outside, monkeypatch, model_id, name):
    import core.inference as inference
    from components.models_tab import exports_dir, merge_model

    class Saved:
        def save_pretrained(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "config.json").write_text("{}")

    class Loaded:
        model = type("M", (), {"merge_and_unload": lambda self: Saved()})()
        tokenizer = Saved()
        card = {}

    monkeypatch.setattr(inference, "load_model", lambda *a, **k: Loaded())
    folder = home() / "runs" / f"merge-{abs(hash(model_id))}" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    rec_id = _add_model(ctx.store, folder, name=name, model_id=model_id)
    escape = home().parent / "escape"
    if model_id.startswith(".."):
        with pytest.raises(ModelForgeError, match="refusing"):
            merge_model(ctx, rec_id)
    else:
        zip_path = Path(merge_model(ctx, rec_id)).resolve()
        assert exports_dir().resolve() in zip_path.parents and ".." not in zip_path.name
    assert not escape.exists() and not (home().parent / "x").exists()
    assert (outside / "keep.txt").read_text() == "mine"


# -- upload size ---------------------------------------------------------------------------------------------
def test_upload_limit_setting(monkeypatch):
    from components.dataset_tab import DEFAULT_MAX_UPLOAD_MB, max_upload_bytes, max_upload_mb

    monkeypatch.delenv("MODELFORGE_MAX_UPLOAD_MB", raising=False)
    assert max_upload_mb() == DEFAULT_MAX_UPLOAD_MB == 200
    monkeypatch.setenv("MODELFORGE_MAX_UPLOAD_MB", "0.5")
    assert max_upload_bytes() == 2**19
    monkeypatch.setenv("MODELFORGE_MAX_UPLOAD_MB", "0")
    assert max_upload_bytes() is None  # explicitly unlimited
    monkeypatch.setenv("MODELFORGE_MAX_UPLOAD_MB", "lots")
    assert max_upload_mb() == DEFAULT_MAX_UPLOAD_MB  # a typo never removes the limit


def test_the_app_refuses_uploads_over_the_limit(locked_app, authed, tmp_path):
    from gradio_client import handle_file

    big = tmp_path / "big.jsonl"
    big.write_bytes(b'{"text": "hello"}\n' * 70_000)  # ~1.2 MB against the app's 1 MB
    with pytest.raises(Exception, match="(?i)maximum file size|too large|1 ?mb"):
        authed.predict(file=handle_file(str(big)), api_name="/validate_dataset")
    # A client that skips the check gets the server's refusal (Gradio's max_file_size).
    r = httpx.post(locked_app[0] + "gradio_api/upload", cookies=authed.cookies, timeout=60,
                   files={"files": ("big.jsonl", big.read_bytes())})
    assert r.status_code == 413, (r.status_code, r.text[:200])
    small = tmp_path / "small.jsonl"
    small.write_bytes(b'{"text": "hello"}\n{"text": "world"}\n')
    assert authed.predict(file=handle_file(str(small)), api_name="/validate_dataset")["report"]["rows"] == 2
