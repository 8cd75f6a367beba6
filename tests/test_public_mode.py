"""Public mode, attacked as a stranger would: a guest of a ``--share --auth`` app (offline it serves
locally, in restricted mode) reaches only what it uploaded.

Every endpoint that takes a path, a name, a config or a file is sent absolute paths, ``../``,
``~``, symlinks out of the data folder and ``FileData`` naming server files, through
``gradio_client`` and raw HTTP. Each must be refused with a message, and nothing may be copied,
read or recorded on the way.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import httpx
import pytest

from components.common import EXAMPLES, gradio_upload_dir, uploads_dir
from core.paths import home
from tests.helpers import served_app

USER, PASSWORD = "guest", "a-long-guest-password"
MARKER = f"SERVER-SECRET-{uuid.uuid4().hex[:12]}"  # per session: Gradio's temp folder outlives a run
REFUSED = "(?i)does not read files from the server|not a file you uploaded|not allowed in this public app|public app"


def _secret_rows() -> str:
    return json.dumps([{"instruction": f"{MARKER} question {i}", "output": f"{MARKER} answer"} for i in range(8)])


@pytest.fixture(scope="module")
def public(tmp_path_factory, demo_model):
    """(url, client, store, paths): a `--share --auth` app and server files a guest must not reach."""
    from gradio_client import Client

    outside = tmp_path_factory.mktemp("server-files")
    secret = outside / "secret.json"
    secret.write_text(_secret_rows())
    (outside / "evil.yaml").write_text("model: demo\ndataset: " + str(secret) + "\n")
    model_dir = outside / "private-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    # A symlink inside the uploads folder pointing out of it (as if planted earlier).
    planted = uploads_dir() / "planted"
    planted.mkdir(parents=True, exist_ok=True)
    link = planted / "link.json"
    if not link.exists():
        link.symlink_to(secret)
    # A file in Gradio's temp folder that this app never received (another app's, say).
    foreign_dir = gradio_upload_dir() / "not-this-apps-upload"
    foreign_dir.mkdir(parents=True, exist_ok=True)
    foreign = foreign_dir / "foreign.json"
    foreign.write_text(_secret_rows())
    runs = home() / "runs" / "guest-peek"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "events.jsonl").write_text('{"text": "%s"}\n' % MARKER)
    paths = {"secret": secret, "outside": outside, "model_dir": model_dir, "link": link, "foreign": foreign,
             "events": runs / "events.jsonl"}
    with served_app(tmp_path_factory.mktemp("public") / "records.db", share=True,
                    auth=f"{USER}:{PASSWORD}") as (running, services):
        assert running.share_url is None  # offline: no tunnel, served locally, still in public mode
        assert services is not None and running.app.state.modelforge.restrict_paths
        client = Client(running.url, auth=(USER, PASSWORD), verbose=False)
        try:
            yield running.url, client, services.store, paths
        finally:
            client.close()
            shutil.rmtree(foreign_dir, ignore_errors=True)  # Gradio's temp folder outlives the test


def _hostile_names(p: dict) -> list[str]:
    secret = p["secret"]
    rel = os.path.relpath(secret, Path.cwd())
    return [str(secret), rel, "../" * 12 + str(secret).lstrip("/"), "~/" + os.path.relpath(secret, Path.home()),
            str(p["link"]), str(p["foreign"]), str(p["events"]), str(home() / "modelforge.db"),
            str(uploads_dir() / ".." / ".." / secret.name), "/etc/passwd"]


def _nothing_leaked(store, paths) -> None:
    assert store.list_runs() == [] or all(MARKER not in json.dumps(r.config) for r in store.list_runs())
    for root in (uploads_dir(), gradio_upload_dir()):
        for f in root.rglob("*"):
            if f.is_file() and not f.is_symlink() and f != paths["foreign"]:
                assert MARKER.encode() not in f.read_bytes(), f"a server file was copied to {f}"


def _post(url: str, client, route: str, payload: dict) -> httpx.Response:
    with httpx.Client(base_url=url, cookies=client.cookies, timeout=30) as http:
        return http.post(route, json=payload)


# -- FileData naming server files ------------------------------------------------------------------------
def _filedata(path: str, meta: bool = True) -> dict:
    d = {"path": path, "orig_name": Path(path).name or "x.json"}
    if meta:
        d["meta"] = {"_type": "gradio.FileData"}
    return d


@pytest.mark.parametrize("meta", [True, False], ids=["with-meta", "bare-dict"])
def test_filedata_naming_server_files_is_refused_before_anything_is_copied(public, meta):
    url, client, store, paths = public
    targets = [str(paths["secret"]), str(paths["link"]), str(paths["foreign"]), str(paths["events"]),
               str(gradio_upload_dir() / ".." / ".." / str(paths["secret"]).lstrip("/")), "~/.bashrc",
               "/etc/passwd", "http://127.0.0.1:1/secret.json"]
    for target in targets:
        r = _post(url, client, "gradio_api/call/validate_dataset", {"data": [_filedata(target, meta), "", None]})
        assert r.status_code == 403, (target, r.status_code, r.text[:300])
        assert "not a file you uploaded" in r.json()["detail"]
    _nothing_leaked(store, paths)


def test_filedata_to_the_dataset_tabs_upload_event_is_refused(public):
    """The browser's own event (not a named endpoint): queue/join with the upload event's fn_index."""
    url, client, store, paths = public
    with httpx.Client(base_url=url, cookies=client.cookies, timeout=30) as http:
        config = http.get("config").json()
    upload_id = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "upload-dataset")
    fn_index = next(i for i, d in enumerate(config["dependencies"])
                    if [upload_id, "upload"] in [list(t) for t in d["targets"]])
    n_inputs = len(config["dependencies"][fn_index]["inputs"])
    data = [_filedata(str(paths["secret"]))] + [None] * (n_inputs - 1)
    r = _post(url, client, "gradio_api/queue/join",
              {"data": data, "fn_index": fn_index, "session_hash": "attacker1", "event_data": None})
    assert r.status_code == 403, (r.status_code, r.text[:300])
    _nothing_leaked(store, paths)


def test_a_real_upload_still_validates(public, tmp_path):
    from gradio_client import handle_file

    url, client, store, paths = public
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"text": "hello"}\n{"text": "world"}\n')
    out = client.predict(file=handle_file(str(mine)), api_name="/validate_dataset")
    assert out["report"]["rows"] == 2
    stored = Path(out["dataset"]).resolve()
    assert uploads_dir().resolve() in stored.parents
    # ...and the copy it made is usable by name afterwards (Start trains what was checked).
    assert client.predict(dataset=str(stored), api_name="/validate_dataset")["report"]["rows"] == 2


def test_gradio_file_route_serves_no_server_file(public):
    url, client, store, paths = public
    with httpx.Client(base_url=url, cookies=client.cookies, timeout=30) as http:
        for target in (paths["secret"], paths["foreign"], home() / "modelforge.db", Path("/etc/passwd")):
            r = http.get(f"gradio_api/file={target}")
            assert r.status_code in (403, 404), (target, r.status_code)
            assert MARKER not in r.text


# -- names and paths as text -------------------------------------------------------------------------------
def test_validate_dataset_by_name_refuses_every_server_path(public):
    from gradio_client.exceptions import AppError

    url, client, store, paths = public
    for name in _hostile_names(paths):
        with pytest.raises(AppError, match=REFUSED) as exc:
            client.predict(dataset=name, api_name="/validate_dataset")
        assert MARKER not in str(exc.value)
    _nothing_leaked(store, paths)


def test_check_config_and_start_training_refuse_server_paths(public):
    from gradio_client.exceptions import AppError

    url, client, store, paths = public
    for name in _hostile_names(paths):
        out = client.predict(config={"dataset": name}, api_name="/check_config")
        assert not out["ok"] and any(p["field"] == "dataset" for p in out["problems"]), (name, out)
        with pytest.raises(AppError, match=REFUSED):
            client.predict(config={"dataset": name, "max_steps": 1}, api_name="/start_training")
    assert store.list_runs() == []
    _nothing_leaked(store, paths)


@pytest.mark.parametrize("field,value", [
    ("output_dir", "/tmp/guest-writes-here"), ("output_dir", "../../escape"), ("output_dir", "~/x"),
    ("model", "MODEL_DIR"), ("model", "../../../../MODEL_DIR"), ("model", "~/models/x"), ("model", "/etc"),
    ("model", "assets"), ("reward_model", "MODEL_DIR"), ("reward_model", "/etc"),
    ("trust_remote_code", True), ("main_process_ip", "10.0.0.1"),
], ids=lambda v: str(v)[:20])
def test_start_and_check_refuse_public_mode_fields(public, field, value):
    from gradio_client.exceptions import AppError

    url, client, store, paths = public
    if isinstance(value, str):
        value = value.replace("MODEL_DIR", str(paths["model_dir"]))
    config = {field: value, "max_steps": 1}
    if field == "reward_model":
        config["strategy"] = "rlhf"
    with pytest.raises(AppError, match=REFUSED) as exc:
        client.predict(config=config, api_name="/start_training")
    assert field in str(exc.value)
    out = client.predict(config=config, api_name="/check_config")
    assert not out["ok"] and field in [p["field"] for p in out["problems"]]
    assert store.list_runs() == []
    assert not Path("/tmp/guest-writes-here").exists()


def test_a_hub_id_is_not_refused_as_a_path(public):
    url, client, store, paths = public
    out = client.predict(config={"model": "Qwen/Qwen2.5-0.5B-Instruct"}, api_name="/check_config")
    assert not any(p["field"] == "model" and "public" in p["message"] for p in out["problems"]), out
    out = client.predict(config={}, api_name="/check_config")  # the defaults (bundled example, demo)
    assert out["ok"], out


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../../etc/hosts", "~/.config/x", "OUTSIDE/evil",
                                  "../presets/identity-demo", "identity-demo.yaml", "identity-demo/../identity-demo"])
def test_presets_only_by_bundled_name(public, name):
    from gradio_client.exceptions import AppError

    url, client, store, paths = public
    name = name.replace("OUTSIDE", str(paths["outside"]))
    with pytest.raises(AppError, match="no preset named"):
        client.predict(name=name, api_name="/preset")
    with pytest.raises(AppError, match="no preset named"):
        client.predict(config={"max_steps": 1}, preset=name, api_name="/start_training")
    assert client.predict(name="identity-demo", api_name="/preset")["model"] == "demo"
    assert store.list_runs() == []


def test_raw_http_gets_the_same_refusals(public):
    """No gradio_client: the /call route with hostile values, answered with an error event."""
    url, client, store, paths = public
    with httpx.Client(base_url=url, cookies=client.cookies, timeout=30) as http:
        for route, data in [("validate_dataset", [None, str(paths["secret"]), None]),
                            ("preset", ["../../../../etc/passwd"]),
                            ("start_training", [{"output_dir": "/tmp/x", "max_steps": 1}, ""]),
                            ("check_config", [{"model": str(paths["model_dir"])}])]:
            r = http.post(f"gradio_api/call/{route}", json={"data": data})
            assert r.status_code == 200, r.text
            event_id = r.json()["event_id"]
            stream = http.get(f"gradio_api/call/{route}/{event_id}").text
            if route == "check_config":
                assert '"ok": false' in stream.replace("\\", "") or "false" in stream, stream[:400]
            else:
                assert "event: error" in stream, (route, stream[:400])
            assert MARKER not in stream
    assert store.list_runs() == []


@pytest.mark.parametrize("api_name,args", [
    ("/model_details", {"model_id": "HOSTILE"}),
    ("/delete_model", {"model_id": "HOSTILE", "confirm": True}),
    ("/resume_training", {"run_id": "HOSTILE"}),
    ("/stop_training", {"run_id": "HOSTILE"}),
    ("/training_status", {"run_id": "HOSTILE"}),
    ("/chat", {"model_id": "HOSTILE", "message": "hi"}),
    ("/generate", {"model_id": "HOSTILE", "prompt": "hi"}),
    ("/summarize", {"model_id": "HOSTILE", "document": "a text"}),
    ("/answer", {"model_id": "HOSTILE", "context": "a text", "question": "q"}),
    ("/push_to_hub", {"model_id": "HOSTILE", "repo_id": "me/x", "token": "hf_x"}),
    ("/hardware", {"task": "HOSTILE"}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_ids_and_names_are_never_paths(public, api_name, args):
    """Every endpoint that takes a model or run id looks it up in the records, never on disk."""
    from gradio_client.exceptions import AppError

    url, client, store, paths = public
    for hostile in (str(paths["secret"]), "../../../../etc/passwd", "~/.ssh/id_rsa", str(paths["model_dir"]),
                    str(paths["link"])):
        call = {k: (hostile if v == "HOSTILE" else v) for k, v in args.items()}
        try:
            answer = client.predict(**call, api_name=api_name)
        except AppError as exc:
            text = str(exc)
        else:  # only the status answers an unknown id, without raising
            assert api_name == "/training_status" and answer["status"] == "unknown", answer
            text = json.dumps(answer)
        assert MARKER not in text and "Traceback" not in text and "Unexpected error" not in text, text[:300]
    assert paths["secret"].exists() and paths["model_dir"].exists()
    _nothing_leaked(store, paths)
