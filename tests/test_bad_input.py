"""Bad input everywhere: every malformed file and config is refused by every entry point, with a
message that names the file, line or field, and nothing is written to the records.

Entry points: the CLI (``modelforge validate`` / ``modelforge train``, exit code 2), the app's
upload handler (the very function the Dataset tab's upload event runs), and the running app
through gradio_client (``/validate_dataset``, ``/start_training``). The data corpus is
tests/fixtures/malformed (built by make_corpus.py there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.malformed.make_corpus import CASES, HERE as CORPUS, build
from tests.helpers import served_app

ROOT = Path(__file__).resolve().parents[1]
BY_NAME = {c.name: c for c in CASES}
NAMES = sorted(BY_NAME)


def _mentions(text: str, case) -> None:
    low = text.lower()
    assert case.name in text, f"{case.name} not named in: {text[:600]}"
    for where in case.where:
        assert where.lower() in low, f"{where!r} not named for {case.name} in: {text[:600]}"
    assert "Traceback" not in text


def _as_text(problems: list[dict]) -> str:
    """Problems from a JSON answer as the user reads them ("file, line 3, field 'output': ...")."""
    from core.errors import Problem

    return "\n".join(str(Problem(**p)) for p in problems)


def _counts(store) -> tuple[int, int, int]:
    from sqlmodel import Session, func, select

    from core.records import MetricPoint, ModelRecord, Run

    with Session(store.engine) as s:
        return tuple(s.exec(select(func.count()).select_from(t)).one() for t in (Run, ModelRecord, MetricPoint))


def test_committed_corpus_matches_the_script(tmp_path):
    built = build(tmp_path)
    for name, path in built.items():
        assert (CORPUS / name).read_bytes() == path.read_bytes(), f"rerun make_corpus.py: {name} differs"
    assert len(CASES) >= 15 and (CORPUS / "one_broken_line_of_5000.jsonl").read_text().count("\n") == 5000


# -- the CLI ---------------------------------------------------------------------------------------------
@pytest.fixture()
def cli_home(tmp_path, monkeypatch):
    home = tmp_path / "clihome"
    monkeypatch.setenv("MODELFORGE_HOME", str(home))
    return home


def _cli(capsys, *argv: str) -> tuple[int, str]:
    from app.main import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("name", NAMES)
def test_cli_validate_refuses_each_malformed_file(cli_home, capsys, name):
    case = BY_NAME[name]
    code, text = _cli(capsys, "validate", str(CORPUS / name), "--strategy", case.strategy)
    assert code == 2, text
    _mentions(text, case)
    assert "trainable: NO" in text
    code, text = _cli(capsys, "validate", str(CORPUS / name), "--strategy", case.strategy, "--json")
    report = json.loads(text.strip().splitlines()[-1])
    assert code == 2 and report["ok"] is False and report["errors"] >= 1
    _mentions(_as_text(report["problems"]), case)
    assert not (cli_home / "modelforge.db").exists()  # validating never opens the records


def test_cli_validate_exit_code_in_a_real_process(tmp_path):
    env = {**os.environ, "MODELFORGE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "app.main", "validate", str(CORPUS / "one_broken_line_of_5000.jsonl")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 2
    _mentions(out.stdout + out.stderr, BY_NAME["one_broken_line_of_5000.jsonl"])


BAD_FLAGS = [
    (["--learning-rate", "5"], "learning_rate"),
    (["--lora-r", "0"], "lora_r"),
    (["--validation-split", "0.9"], "validation_split"),
    (["--max-length", "4"], "max_length"),
    (["--batch-size", "0"], "batch_size"),
    (["--batch-size", "two"], "batch_size"),
    (["--save-steps", "-1"], "save_steps"),
    (["--strategy", "dpo", "--task", "extractive-qa"], "strategy"),
]
HOSTILE_NAMES = ["../evil", "a/b", "..", "/etc/passwd", "x" * 300, "bad\x00name", "tab\there", "nl\nname",
                 "\x1b[2Jclear", "-rf", "back\\slash", " lead-space", "C:..\\win"]


def _nothing_recorded(home: Path) -> None:
    from core.records import RecordStore

    store = RecordStore(f"sqlite:///{home / 'modelforge.db'}")
    assert _counts(store) == (0, 0, 0)
    runs = home / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    assert not (home.parent / "evil").exists() and not (home / "evil").exists()


def test_cli_train_reports_every_bad_flag_at_once(cli_home, capsys):
    identity = str(ROOT / "assets" / "examples" / "identity.json")
    out_of_range = [f for flags, _ in BAD_FLAGS if "two" not in flags and "--strategy" not in flags for f in flags]
    code, text = _cli(capsys, "train", "--dataset", identity, *out_of_range)
    assert code == 2 and "Traceback" not in text
    for flags, field in BAD_FLAGS:
        if "two" not in flags and "--strategy" not in flags:
            assert field in text, (field, text)
    code, text = _cli(capsys, "train", "--dataset", identity, "--batch-size", "two", "--lora-r", "1.5")
    assert code == 2 and "'two' is not a whole number" in text and "lora_r" in text
    # A wrong type and an out-of-range value in one command: one answer names both.
    code, text = _cli(capsys, "train", "--dataset", identity, "--learning-rate", "abc", "--lora-r", "-1",
                      "--max-steps", "5")
    assert code == 2 and "'abc' is not a number" in text and "--lora-r" in text and "minimum 1" in text, text
    assert "--max-steps" not in text, text
    code, text = _cli(capsys, "train", "--dataset", identity, "--strategy", "dpo", "--task", "extractive-qa")
    assert code == 2 and "strategy" in text and "extractive-qa" in text
    _nothing_recorded(cli_home)


def test_cli_train_refuses_unknown_flags(cli_home, capsys):
    from app.main import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--lora-rank", "8"])
    assert exc.value.code == 2 and "--lora-rank" in capsys.readouterr().err


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n)[:20])
def test_cli_train_refuses_hostile_names(cli_home, capsys, name):
    code, text = _cli(capsys, "train", "--dataset", str(ROOT / "assets" / "examples" / "identity.json"),
                      f"--name={name}")
    assert code == 2 and "name" in text and "Traceback" not in text, text
    assert "\x1b" not in text and "\x00" not in text  # echoed escaped, never raw
    _nothing_recorded(cli_home)


YAML_CASES = {
    "unknown_keys.yaml": ("model: demo\nlora_rank: 8\nlearnin_rate: 0.1\n", ["lora_rank", "learnin_rate",
                                                                            "learning_rate"]),
    "out_of_range.yaml": ("learning_rate: 3\nlora_dropout: 2\nsave_total_limit: 0\n",
                          ["learning_rate", "lora_dropout", "save_total_limit"]),
    "wrong_types.yaml": ("batch_size: [1, 2]\npacking: maybe\ncolumn_map: 5\n", ["batch_size", "packing", "column_map"]),
    "mismatch.yaml": ("strategy: kto\ntask: summarization\n", ["strategy"]),
    "hostile_name.yaml": ('name: "../../etc/\\x07bell"\n', ["name"]),
    "syntax.yaml": ("model: demo\n  bad: [indent\n", ["line 2"]),
    "a_list.yaml": ("- model\n- demo\n", ["mapping"]),
    "latin1.yaml": ("name: caf\u00e9\n".encode("latin-1"), ["utf-8"]),
}


@pytest.mark.parametrize("fname", sorted(YAML_CASES))
def test_cli_train_refuses_malformed_yaml_configs(cli_home, capsys, tmp_path, fname):
    text, expected = YAML_CASES[fname]
    path = tmp_path / fname
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, out = _cli(capsys, "train", "--config", str(path), "--dataset",
                     str(ROOT / "assets" / "examples" / "identity.json"))
    assert code == 2 and "Traceback" not in out, out
    for word in expected:
        assert word.lower() in out.lower(), (word, out)
    if fname not in ("mismatch.yaml", "out_of_range.yaml", "hostile_name.yaml"):
        assert fname in out  # problems in the file itself name the file
    _nothing_recorded(cli_home)


# -- the app's upload handler --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upload_handler(tmp_path_factory, demo_model):
    """The function the Dataset tab's upload event runs to check the file, taken from the built Blocks
    (the upload first clears the previous file's figures, then checks: the second function)."""
    from app.ui import build_blocks
    from components.common import AppContext
    from core.jobs import JobManager
    from core.records import RecordStore

    store = RecordStore(f"sqlite:///{tmp_path_factory.mktemp('uploaddb') / 'records.db'}")
    ctx = AppContext(store=store, jobs=JobManager(store))
    blocks = build_blocks(ctx)
    upload = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "upload-dataset")
    first = next(f for f in blocks.fns.values() if any(t[0] == upload._id and t[1] == "upload" for t in f.targets))
    fn = next(f for f in blocks.fns.values() if f.trigger_after == first._id)
    return fn.fn, store


@pytest.mark.parametrize("name", NAMES)
def test_upload_handler_refuses_each_malformed_file(upload_handler, name):
    import gradio as gr

    from components.common import default_config
    from components.configure_tab import config_to_values

    handler, store = upload_handler
    case = BY_NAME[name]
    config = default_config().replace(strategy=case.strategy)
    status, _split, _preview, _hist, problems, dataset, _fmt, _cmap, _name, _chooser = handler(
        str(CORPUS / name), None, "auto", "", *config_to_values(config))
    problems = problems.value["data"]  # an update that also shows the report (hidden until a check)
    # Refused in one line naming the file; the form keeps the dataset in use (issue 17).
    assert f"{case.name} was not used" in status and "Still in use: **identity.json" in status
    assert isinstance(dataset, type(gr.skip()))
    _mentions(json.dumps(problems), case)
    assert all(row[2] for row in problems if row[0].startswith("error"))  # every error says how to fix it
    assert _counts(store) == (0, 0, 0)


def test_upload_handler_refuses_a_file_over_the_size_limit(upload_handler, tmp_path, monkeypatch):
    import gradio as gr

    from components.common import default_config, guard, uploads_dir
    from components.configure_tab import config_to_values

    handler, _ = upload_handler
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"\x00" * (3 * 2**20))
    monkeypatch.setenv("MODELFORGE_MAX_UPLOAD_MB", "2")
    before = sorted(uploads_dir().rglob("*"))
    status = guard(handler)(str(big), None, "auto", "", *config_to_values(default_config()))[0]
    assert "big.jsonl was not used: big.jsonl is 3.0 MB, over this app's upload limit of 2 MB" in status
    assert sorted(uploads_dir().rglob("*")) == before  # refused before it was copied
    monkeypatch.setenv("MODELFORGE_MAX_UPLOAD_MB", "4")  # under the limit: it is read (and is binary)
    status = handler(str(big), None, "auto", "", *config_to_values(default_config()))[0]
    assert "big.jsonl was not used" in status


# -- the running app through gradio_client ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory, demo_model):
    from gradio_client import Client

    with served_app(tmp_path_factory.mktemp("badapi") / "records.db") as (running, services):
        client = Client(running.url, verbose=False)
        yield client, services.store
        client.close()


@pytest.mark.parametrize("name", NAMES)
def test_api_validate_dataset_refuses_each_malformed_file(app, name):
    from gradio_client import handle_file

    client, store = app
    case = BY_NAME[name]
    report = client.predict(file=handle_file(str(CORPUS / name)), config={"strategy": case.strategy},
                            api_name="/validate_dataset")
    assert report["ok"] is False and report["report"]["errors"] >= 1
    _mentions(_as_text(report["report"]["problems"]), case)
    _mentions(report["summary"], case)
    assert _counts(store) == (0, 0, 0)


BAD_API_CONFIGS = [
    ({"lora_rank": 8}, "unknown field 'lora_rank'"),
    ({"learning_rate": 2.0, "lora_r": 0}, "learning_rate"),
    ({"batch_size": "many"}, "batch_size"),
    ({"strategy": "dpo", "task": "extractive-qa"}, "strategy"),
    ({"dataset": "/etc/passwd.json"}, "dataset"),
] + [({"name": n}, "name") for n in HOSTILE_NAMES]


@pytest.mark.parametrize("config,expected", BAD_API_CONFIGS, ids=lambda v: repr(v)[:24])
def test_api_start_training_refuses_malformed_configs(app, config, expected):
    from gradio_client.exceptions import AppError

    client, store = app
    with pytest.raises(AppError) as exc:
        client.predict(config=config, api_name="/start_training")
    assert expected in str(exc.value) and "Traceback" not in str(exc.value)
    assert _counts(store) == (0, 0, 0)
    assert client.predict(api_name="/list_runs") == []
