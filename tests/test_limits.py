"""Bad values never reach a trainer, and no input can exhaust the server.

NaN and infinity are refused for every float field by the CLI (exit 2), YAML (``.nan``), JSON
(``NaN``) and the API; text is bounded (a 10 MB value gets a field-level answer of a few
hundred bytes, and the log does not grow by 10 MB); YAML size and alias bombs are capped; the
chat's sampling settings are checked, one user's long answer does not hold the queue for the
others, and a generation stops when its client goes away, on the API path too.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import fields
from pathlib import Path

import httpx
import pytest

from core.config import RunConfig, from_yaml
from core.errors import ConfigError
from tests.helpers import served_app

FLOAT_FIELDS = [f.name for f in fields(RunConfig) if (f.type if isinstance(f.type, str) else f.type.__name__) == "float"]
NON_FINITE = ["nan", "inf", "-inf", "NaN", "Infinity"]
BIG = "x" * 10_000_000


def _cli(capsys, *argv: str) -> tuple[int, str]:
    from app.main import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture()
def cli_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELFORGE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", NON_FINITE)
def test_cli_refuses_non_finite_floats(cli_home, capsys, field, value):
    code, text = _cli(capsys, "train", "--model", "demo", "--dataset", "x.json", f"--{field.replace('_', '-')}={value}")
    assert code == 2, text
    assert field.replace("_", "-") in text and "finite" in text
    assert not (cli_home / "runs").exists() or not any((cli_home / "runs").iterdir())


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("literal", [".nan", ".inf", "-.inf", ".NaN"])
def test_yaml_refuses_non_finite_floats(field, literal):
    with pytest.raises(ConfigError) as exc:
        from_yaml(f"{field}: {literal}\n")
    assert field in str(exc.value) and "finite" in str(exc.value)


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_json_nan_and_direct_construction_are_refused(field):
    data = json.loads('{"%s": NaN}' % field)  # what a JSON config or an API body carries
    with pytest.raises(ConfigError, match=field):
        RunConfig.from_dict(data)
    from core.checks import validate_config

    problems = validate_config(RunConfig(model="demo", dataset="x.json").replace(**{field: float("inf")}),
                               check_paths=False)
    assert any(p.field == field and "finite" in p.message for p in problems)


def test_yaml_bombs_and_huge_files_are_capped(tmp_path, cli_home, capsys):
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"b{i}: &b{i} [{','.join(['*b' + str(i - 1) if i > 1 else '*a'] * 9)}]\n" for i in range(1, 7))
    for text in (bomb + "column_map: {k: *b6}\n", bomb + "system_prompt: *b6\n",
                 "x: &x [" + ",".join(["*x"] * 0) + "1]\n" + "y: [" + ",".join(["*x"] * 100) + "]\n"):
        started = time.perf_counter()
        with pytest.raises(ConfigError) as exc:
            from_yaml(text)
        assert len(str(exc.value)) < 2000 and time.perf_counter() - started < 2
        assert "alias" in str(exc.value)
    big = tmp_path / "big.yaml"
    big.write_text("name: " + "y" * 400_000 + "\n")
    code, text = _cli(capsys, "train", "--config", str(big))
    assert code == 2 and "KB" in text and len(text) < 2000


def test_huge_values_get_a_field_message_not_an_echo(tmp_path, cli_home, capsys):
    for flag in ("--dataset", "--name", "--model", "--system-prompt", "--output-dir"):
        code, text = _cli(capsys, "train", flag, BIG)
        assert code == 2 and len(text) < 3000, (flag, len(text))
        assert "over the limit" in text
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: " + "z" * 200_000 + "\n")
    code, text = _cli(capsys, "train", "--config", str(cfg))
    assert code == 2 and len(text) < 3000 and "dataset" in text


# -- the running app -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory, demo_model):
    """The app, a client, its store and a chat model (the demo model itself as a record)."""
    from gradio_client import Client

    from core.records import ModelRecord

    with served_app(tmp_path_factory.mktemp("limits") / "records.db") as (running, services):
        run = services.store.create_run("chat-model", {})
        services.store.finish_run(run.id, "completed", model=ModelRecord(
            id="model-chat", name="chatty", base_model="demo", task="text-generation", strategy="sft",
            provider="huggingface", path=str(demo_model), run_id=run.id))
        client = Client(running.url, verbose=False)
        yield running.url, client, services.store
        client.close()


def _call_raw(url: str, name: str, body: str) -> str:
    """POST a raw JSON text (NaN and Infinity are JSON to Python, not to gradio_client) and read the answer."""
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post(f"gradio_api/call/{name}", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text[:300]
        return http.get(f"gradio_api/call/{name}/{r.json()['event_id']}").text


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_api_refuses_nan_in_every_float_field(app, field):
    url, client, store = app
    before = len(store.list_runs())
    for literal in ("NaN", "Infinity", "-Infinity"):
        answer = _call_raw(url, "start_training", '{"data": [{"%s": %s, "max_steps": 1}, ""]}' % (field, literal))
        assert "event: error" in answer and field in answer and "finite" in answer, answer[:400]
        answer = _call_raw(url, "check_config", '{"data": [{"%s": %s}]}' % (field, literal))
        assert "event: error" in answer and field in answer, answer[:400]
    for data, name in (('["model-chat", "hi", null, 8, NaN, 0.9, "", false]', "temperature"),
                       ('["model-chat", "hi", null, 8, 0.0, Infinity, "", false]', "top_p"),
                       ('["model-chat", "hi", null, "abc", 0.0, 0.9, "", false]', "max_new_tokens"),
                       ('["model-chat", "hi", null, 1e300, 0.0, 0.9, "", false]', "max_new_tokens")):
        answer = _call_raw(url, "chat", '{"data": %s}' % data)
        assert "event: error" in answer and name in answer and "Unexpected" not in answer, answer[:400]
    assert len(store.list_runs()) == before


def test_api_answers_huge_strings_with_the_field_and_keeps_the_log_small(app):
    from gradio_client.exceptions import AppError

    from components.common import fault_log_path

    url, client, store = app
    log = fault_log_path()
    size_before = log.stat().st_size if log.exists() else 0
    calls = [dict(dataset=BIG, api_name="/validate_dataset"), dict(name=BIG, api_name="/preset"),
             dict(run_id=BIG, api_name="/training_status"), dict(model_id=BIG, api_name="/model_details"),
             dict(config={"name": BIG}, api_name="/start_training"),
             dict(config={"dataset": BIG}, api_name="/config_command"),
             dict(model_id="model-chat", message=BIG, api_name="/chat")]
    for call in calls:
        with pytest.raises(AppError) as exc:
            client.predict(**call)
        text = str(exc.value)
        assert len(text) < 3000 and "over the limit" in text, (call["api_name"], text[:300])
        assert "Unexpected error" not in text
    assert (log.stat().st_size if log.exists() else 0) - size_before < 100_000
    # Bodies over MODELFORGE_MAX_REQUEST_MB (16) never reach a handler.
    r = httpx.post(url + "gradio_api/call/validate_dataset", json={"data": [None, "y" * 17_000_000, None]}, timeout=60)
    assert r.status_code == 413


@pytest.mark.parametrize("kwargs,field", [
    ({"max_new_tokens": 10**9}, "max_new_tokens"), ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 99}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"top_p": 0}, "top_p"),
])
def test_chat_sampling_settings_are_checked(app, kwargs, field):
    from gradio_client.exceptions import AppError

    url, client, store = app
    with pytest.raises(AppError) as exc:
        client.predict(model_id="model-chat", message="hi", **kwargs, api_name="/chat")
    assert field in str(exc.value) and "Unexpected error" not in str(exc.value)
    if "max_new_tokens" in kwargs:
        with pytest.raises(AppError, match=field):
            client.predict(model_id="model-chat", prompt="hi", **kwargs, api_name="/generate")


def _generating() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("(_run)") and t.is_alive()]


@pytest.fixture()
def slow_tokens(monkeypatch):
    """Each generated token takes 60 ms: a long answer (512 tokens: 30 s) takes long enough to watch."""
    import core.inference as inference

    put = inference._TokenQueue.put

    def slow_put(self, value):
        time.sleep(0.06)
        return put(self, value)

    monkeypatch.setattr(inference._TokenQueue, "put", slow_put)


def _page_chat_event(config: dict) -> int:
    """The fn_index of the Playground's Send button (a page event, not a named endpoint)."""
    send = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "btn-send")
    return next(i for i, d in enumerate(config["dependencies"]) if [send, "click"] in [list(t) for t in d["targets"]])


@pytest.mark.parametrize("path", ["api", "page"])
def test_a_long_answer_does_not_hold_the_queue_and_stops_when_its_client_leaves(app, slow_tokens, path):
    url, client, store = app
    client.predict(model_id="model-chat", message="hi", max_new_tokens=1, api_name="/chat")  # loads the model
    # A: a 2048-token answer (~40 s here) over raw HTTP, whose client then goes away.
    session = f"runaway-client-{path}"
    http = httpx.Client(base_url=url, timeout=30)
    config = http.get("config").json()
    if path == "api":
        fn_index = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "chat")
        data = ["model-chat", "tell me everything", None, 2048, 0.0, 0.95, "", False]
    else:  # model, message, tuned chat, base chat, max new tokens, temperature, top-p, system, compare
        fn_index = _page_chat_event(config)
        data = ["model-chat", "tell me everything", [], [], 512, 0.0, 0.95, "", False]  # the slider's max
    r = http.post("gradio_api/queue/join", json={
        "data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})
    assert r.status_code == 200, r.text
    with http.stream("GET", f"gradio_api/queue/data?session_hash={session}") as stream:
        deadline = time.time() + 30
        lines = stream.iter_lines()  # kept: a dropped iterator would close the stream (= the client leaving)
        for line in lines:
            if "process_starts" in line or time.time() > deadline:
                break
        deadline = time.time() + 20
        while not _generating() and time.time() < deadline:
            time.sleep(0.05)
        assert _generating(), ("the long answer never started", [t.name for t in threading.enumerate()])
        # B: another user's short answer is served while A still generates (A does not hold the queue).
        started = time.perf_counter()
        out = client.predict(model_id="model-chat", message="hi", max_new_tokens=4, api_name="/chat")
        assert isinstance(out["answer"], str) and time.perf_counter() - started < 20
        assert _generating(), "A should still be generating: the test proves nothing otherwise"
    # A's client is gone (the stream above is closed): its generation stops within seconds.
    http.close()
    deadline = time.time() + 15
    while _generating() and time.time() < deadline:
        time.sleep(0.1)
    assert not _generating(), "the generation went on after its client left"
