"""The running app, driven through HTTP and gradio_client as a script or another program would.

The app is launched in a background thread on a free port with the session's temporary
MODELFORGE_HOME. One short run on the demo model goes through the whole flow: validate the
identity data, start, stop (graceful, with a checkpoint), resume, complete, find the model, and
chat with it, while /api/health keeps answering.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from core.paths import EXAMPLES
from tests.helpers import served_app

pytestmark = pytest.mark.slow

# Small and fast: 80 optimizer steps of 4 short examples on the demo model (a few seconds).
RUN = {"max_steps": 80, "batch_size": 4, "max_length": 128, "logging_steps": 2, "save_steps": 100,
       "name": "api-identity"}


@pytest.fixture(scope="module")
def app_url(mf_home, demo_model, tmp_path_factory):
    with served_app(tmp_path_factory.mktemp("apidb") / "records.db") as (running, _):
        yield running.url


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    yield c
    c.close()


def _identity_file() -> Path:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "identity.json"
    return shared if shared.exists() else EXAMPLES / "identity.json"


def test_health_and_info(app_url):
    health = httpx.get(app_url + "api/health", timeout=10).json()
    assert health["status"] == "ok" and "training" in health
    info = httpx.get(app_url + "api/info", timeout=60).json()
    assert {"providers", "strategies", "tasks"} <= set(info)
    assert any(s["name"] == "sft" and s["available"] for s in info["strategies"])
    page = httpx.get(app_url, timeout=10)
    assert page.status_code == 200 and "ModelForge" in page.text


def test_named_endpoints(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    for name in ("validate_dataset", "start_training", "stop_training", "resume_training", "training_status",
                 "list_models", "chat", "generate", "hardware", "check_config", "delete_model", "merge_model"):
        assert f"/{name}" in names, names


def test_validate_and_errors(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    report = client.predict(file=handle_file(str(_identity_file())), api_name="/validate_dataset")
    assert report["ok"] and report["report"]["rows"] == 91 and report["report"]["format"] == "alpaca"
    assert report["report"]["lengths"]["count"] == 91
    by_name = client.predict(dataset="alpaca_sample.json", config={"validation_split": 0.1},
                             api_name="/validate_dataset")
    assert by_name["ok"] and by_name["split"]["validation"] > 0
    # a user error comes back as the engine's message
    with pytest.raises(AppError, match="unknown field 'lora_rank'"):
        client.predict(config={"lora_rank": 8}, api_name="/start_training")
    hw = client.predict(api_name="/hardware")
    assert hw["report"]["cpu"]["logical_cores"] >= 1


def _wait(client, run_id: str, until, timeout: float = 240.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.predict(run_id=run_id, api_name="/training_status")
        if until(status):
            return status
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting; last status: {status}")


def test_train_stop_resume_chat(client, app_url):
    started = client.predict(config=RUN, preset="identity-demo", api_name="/start_training")
    run_id = started["run_id"]
    assert not started["queued"]
    # a second start while the first trains is queued with a clear message, and can be stopped
    second = client.predict(config={**RUN, "name": "api-second", "seed": 7}, api_name="/start_training")
    assert second["queued"] and "queue" in second["message"]
    client.predict(run_id=second["run_id"], api_name="/stop_training")

    status = _wait(client, run_id, lambda s: s["step"] >= 2 or s["done"])
    assert status["status"] in ("running", "completed")
    t0 = time.time()
    assert httpx.get(app_url + "api/health", timeout=10).json()["training"] in (run_id, None)
    assert time.time() - t0 < 5, "health must answer while training"
    if status["status"] == "running":
        # 80 steps leave seconds between "running" and the stop; should the run still end first
        # (a stalled test process), the stop must say so clearly instead of failing silently.
        from gradio_client.exceptions import AppError

        try:
            client.predict(run_id=run_id, api_name="/stop_training")
        except AppError as exc:
            assert "is not training (it is completed)" in str(exc), exc
        else:
            stopped = _wait(client, run_id, lambda s: s["done"])
            assert stopped["status"] == "cancelled", stopped
            resumed = client.predict(run_id=run_id, api_name="/resume_training")
            assert resumed["run_id"] == run_id
    done = _wait(client, run_id, lambda s: s["status"] == "completed" or (s["done"] and s["status"] != "cancelled"))
    assert done["status"] == "completed", done
    assert done["loss"] is not None and done["step"] == RUN["max_steps"] and done["model_id"]
    assert client.predict(run_id=second["run_id"], api_name="/training_status")["status"] == "cancelled"

    models = client.predict(api_name="/list_models")
    assert done["model_id"] in [m["id"] for m in models]
    answer = client.predict(model_id=done["model_id"], message="Who are you?", max_new_tokens=16,
                            compare_base=True, api_name="/chat")
    assert isinstance(answer["answer"], str) and isinstance(answer["base_answer"], str)
    assert answer["history"][-1]["role"] == "assistant"

    details = client.predict(model_id=done["model_id"], api_name="/model_details")
    assert details["curves"]["loss"] and details["config"]["max_steps"] == RUN["max_steps"]
    zip_path, message = client.predict(done["model_id"], api_name="/merge_model")
    import zipfile

    with zipfile.ZipFile(zip_path) as z:
        assert "config.json" in z.namelist() and "modelforge.json" in z.namelist()
    deleted = client.predict(model_id=done["model_id"], confirm=True, api_name="/delete_model")
    assert "Deleted" in deleted["message"]
    assert done["model_id"] not in [m["id"] for m in client.predict(api_name="/list_models")]
