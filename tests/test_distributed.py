"""Several processes through accelerate: the config fields, the generated accelerate configs, and
a real two-process DDP run on the CPU (gloo) that must follow a one-process run's loss curve.

The DDP test is the proof that ModelForge's multi-process mode trains the same model as one
process with the same effective batch (2 processes x batch 2 = 1 process x batch 4, same seed and
data order), and that such a run shows in the Train tab, stops with a checkpoint, resumes and
ends with a model record like any other. FSDP and DeepSpeed need NVIDIA GPUs: here their configs
are generated and read back by accelerate's own launcher code; running them needs a GPU machine.
Two machines are tried on loopback when MODELFORGE_TEST_MULTINODE=1.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from core import distributed, models
from core.checks import validate_config
from core.config import RunConfig, config_fields

ROOT = Path(__file__).resolve().parents[1]


def _fields(problems):
    return {p.field for p in problems}


# -- the config fields ------------------------------------------------------------------------------
def test_distributed_fields_are_flags_and_a_form_section():
    from app.main import build_parser, config_from_args

    section = [f.name for f in config_fields() if f.metadata["section"] == "distributed"]
    assert section == ["num_processes", "distributed", "num_machines", "machine_rank", "main_process_ip",
                       "main_process_port"]
    args = build_parser().parse_args(["train", "--dataset", "x.json", "--num-processes", "16", "--distributed",
                                      "fsdp", "--num-machines", "2", "--machine-rank", "1",
                                      "--main-process-ip", "10.0.0.1", "--main-process-port", "29400"])
    config = config_from_args(args)
    assert (config.num_processes, config.distributed, config.num_machines, config.machine_rank,
            config.main_process_ip, config.main_process_port) == (16, "fsdp", 2, 1, "10.0.0.1", 29400)
    assert RunConfig().num_processes == 1 and not distributed.wants_launch(RunConfig())
    assert distributed.wants_launch(RunConfig(num_processes=2))


def test_contradictory_distributed_fields_are_reported_together():
    bad = RunConfig(model="demo", dataset="x.json", num_processes=3, num_machines=2, machine_rank=2)
    assert {"num_processes", "machine_rank", "main_process_ip"} <= _fields(validate_config(bad, check_paths=False))
    qlora = RunConfig(model="demo", dataset="x.json", num_processes=2, distributed="fsdp", strategy="qlora")
    assert "distributed" in _fields(validate_config(qlora, check_paths=False))
    fine = RunConfig(model="demo", dataset="x.json", num_processes=16, num_machines=2, machine_rank=1,
                     main_process_ip="10.0.0.1")
    assert not _fields(validate_config(fine, check_paths=False)) & {"num_processes", "machine_rank", "main_process_ip"}


def test_each_process_loads_the_model_where_its_engine_wants_it(monkeypatch):
    ddp, fsdp = RunConfig(num_processes=4), RunConfig(num_processes=4, distributed="fsdp")
    assert models.device_map(ddp, cuda=True) == "auto" and models.device_map(ddp, cuda=False) is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert models.device_map(ddp, cuda=True) == {"": 3}  # DDP: a whole copy on its own GPU
    assert models.device_map(fsdp, cuda=True) is None    # FSDP/DeepSpeed shard it themselves
    assert models.device_map(ddp, cuda=False) is None


# -- the accelerate configs, read back by accelerate's launcher ---------------------------------------
def _accelerate_args(tmp_path, config: RunConfig, gpus: int, dtype: str = "bf16"):
    """The generated config file and command, parsed and validated by `accelerate launch` itself."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = distributed.write_accelerate_config(config, tmp_path, gpus=gpus, dtype=dtype)
    load_config_from_file(str(path))  # unknown keys or bad values raise here
    cmd = distributed.launch_command(path, tmp_path, "run-x", None, cpu=gpus == 0, distributed=config.distributed)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    args, defaults, _ = _validate_launch_command(args)
    assert args.training_script == "core.worker" and args.module
    return args, defaults


def test_ddp_on_cpu_runs_torchrun_over_gloo(tmp_path):
    import yaml

    args, defaults = _accelerate_args(tmp_path, RunConfig(num_processes=2, precision="fp32"), gpus=0, dtype="fp32")
    saved = yaml.safe_load((tmp_path / distributed.ACCELERATE_CONFIG).read_text())
    assert saved["distributed_type"] == "MULTI_CPU" and saved["use_cpu"] is True
    assert saved["mixed_precision"] == "no" and saved["num_processes"] == 2
    # --multi_gpu selects accelerate's torchrun launcher (its MULTI_CPU one needs mpirun).
    assert args.multi_gpu and not args.cpu and args.num_processes == 2 and args.use_cpu


def test_ddp_on_gpus_and_multi_node(tmp_path):
    from accelerate.utils.launch import prepare_multi_gpu_env

    config = RunConfig(num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                       main_process_port=29400)
    args, defaults = _accelerate_args(tmp_path, config, gpus=8)
    assert defaults.distributed_type.value == "MULTI_GPU" and not defaults.use_cpu
    env = prepare_multi_gpu_env(args)
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert args.rdzv_endpoint == "10.0.0.1:29400"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_config_builds_accelerates_fsdp2_plugin(tmp_path, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, defaults = _accelerate_args(tmp_path, RunConfig(num_processes=4, distributed="fsdp"), gpus=4)
    assert args.use_fsdp and defaults.distributed_type.value == "FSDP"
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # what the Trainer's Accelerator builds from that env
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert "SHARDED" in str(plugin.state_dict_type)
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"  # FSDP2's "no offload" (CPUOffloadPolicy offloads)
    assert "transformer" in str(plugin.auto_wrap_policy).lower()


def test_deepspeed_config_sets_zero_stage_for_the_trainer(tmp_path):
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults = _accelerate_args(tmp_path, RunConfig(num_processes=8, distributed="deepspeed",
                                                          gradient_accumulation_steps=4), gpus=8, dtype="fp16")
    assert args.use_deepspeed and defaults.distributed_type.value == "DEEPSPEED"
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    cmd, env = prepare_deepspeed_cmd_env(args)
    assert cmd is None  # one machine: torchrun, no ssh launcher
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(distributed.DEEPSPEED_ZERO_STAGE)
    assert env["ACCELERATE_MIXED_PRECISION"] == "fp16"
    # Left to DeepSpeed's "auto" so the Trainer fills them from the run config: never a mismatch.
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env and "ACCELERATE_GRADIENT_CLIPPING" not in env


def test_what_this_machine_cannot_launch_is_refused_before_launching(store, small_alpaca):
    from core.engine import prepare_run, run_training
    from core.events import EventLog, read_events

    problems = distributed.launch_problems(RunConfig(num_processes=4, distributed="deepspeed"), gpus=2)
    assert {p.field for p in problems} >= {"num_processes"}
    config = RunConfig(model="demo", dataset=str(small_alpaca), num_processes=2, distributed="fsdp")
    config, run_id, run_dir = prepare_run(config, store)
    events = EventLog(run_id)
    events.emit("queued", message="starting")
    result = run_training(config, store, events, run_id, run_dir)
    assert result.status == "failed" and "needs NVIDIA GPUs" in result.error and not result.fault
    assert store.get_run(run_id).status == "failed"
    assert [e.type for e in events.events] == ["queued", "failed"]  # memory follows the file
    assert [e.type for e in read_events(run_dir / "events.jsonl")] == ["queued", "failed"]


# -- the pieces that keep ranks from writing twice ----------------------------------------------------
def test_pump_reemits_whole_lines_only(tmp_path):
    from core.events import EventLog

    path = tmp_path / "events.jsonl"
    writer = EventLog("r", path)
    writer.emit("step", step=1, total_steps=4, loss=2.0)
    follower = EventLog("r")
    with path.open("a") as fh:
        fh.write('{"type": "step", "run_id": "r", "step": 2')  # a line being written
    offset = distributed._pump(path, 0, follower)
    assert [(e.type, e.step, e.data) for e in follower.events] == [("step", 1, {"loss": 2.0})]
    with path.open("a") as fh:
        fh.write(', "total_steps": 4, "data": {"loss": 1.5}}\n')
    distributed._pump(path, offset, follower)
    assert [e.step for e in follower.events] == [1, 2] and follower.path is None


def test_other_ranks_report_nothing(tmp_path, store, monkeypatch):
    import threading

    from core.callback import EventCallback
    from core.events import EventLog
    from core.worker import _NoRecords, _SilentEventLog

    silent = _SilentEventLog("r")
    silent.attach_file(tmp_path / "events.jsonl")
    silent.emit("started")
    assert not (tmp_path / "events.jsonl").exists()
    assert _NoRecords().finish_run("r", "completed", model=object()) is None

    run = store.create_run("r", {})
    events = EventLog(run.id)
    cb = EventCallback(events, store, run.id, threading.Event())

    class State:  # what the Trainer passes on rank 1
        global_step, max_steps, is_world_process_zero = 3, 10, False

    class Control:
        should_training_stop = should_save = False

    cb.on_train_begin(None, State(), Control())
    cb.on_log(None, State(), Control(), logs={"loss": 2.0})
    cb.on_evaluate(None, State(), Control(), metrics={"eval_loss": 2.0})
    cb.on_save(type("A", (), {"output_dir": str(tmp_path)})(), State(), Control())
    assert events.events == [] and store.metrics(run.id) == []
    # The stop file reaches every rank's callback (agreed by all ranks; here one process).
    stop = tmp_path / "stop"
    monkeypatch.setenv(distributed.STOP_FILE_ENV, str(stop))
    control = Control()
    cb.on_step_end(None, State(), control)
    assert not control.should_training_stop
    stop.write_text("stop")
    cb.on_step_end(None, State(), control)
    assert control.should_training_stop and control.should_save and cb.stop_event.is_set()


def _ctx(tmp_path, **changes):
    """The parts of a TrainContext that training_kwargs reads."""
    from types import SimpleNamespace

    return SimpleNamespace(config=RunConfig(**changes), eval_rows=[], checkpoint_dir=tmp_path,
                           device="cpu", dtype="fp32")


def test_lora_runs_tell_ddp_not_to_search_for_unused_parameters(tmp_path):
    """A LoRA run's frozen base has no gradients and its adapters are all used each step: DDP's
    search for unused parameters (transformers' default for a PeftModel) is a wasted graph walk."""
    from trl import SFTConfig

    from core.strategies.common import training_kwargs

    kw = training_kwargs(_ctx(tmp_path, num_processes=2))
    assert kw["ddp_find_unused_parameters"] is False
    assert SFTConfig(**kw).ddp_find_unused_parameters is False
    # A strategy that trains the base weights keeps transformers' own choice.
    assert "ddp_find_unused_parameters" not in training_kwargs(_ctx(tmp_path), lora=False)


def test_only_the_saving_rank_writes_the_tokenizer_and_all_wait_for_it(tmp_path):
    """trainer.save_model checks args.should_save itself; the tokenizer beside it must too, and
    every rank waits until the files are there (rlhf's policy stage reads its reward model)."""
    from types import SimpleNamespace

    from core.strategies.common import save

    for rank_saves in (True, False):
        calls = []
        trainer = SimpleNamespace(
            args=SimpleNamespace(should_save=rank_saves),
            save_model=lambda out: calls.append(("model", out)),
            accelerator=SimpleNamespace(wait_for_everyone=lambda: calls.append(("wait",))))
        tokenizer = SimpleNamespace(save_pretrained=lambda out: calls.append(("tokenizer", out)))
        ctx = SimpleNamespace(model_dir=tmp_path / "model", tokenizer=tokenizer)
        save(trainer, ctx)
        out = str(tmp_path / "model")
        assert calls == ([("model", out), ("tokenizer", out), ("wait",)] if rank_saves
                         else [("model", out), ("wait",)])


# -- the proof: two CPU processes train like one --------------------------------------------------------
# Same data, seed and effective batch; fp32. The identity demo's data at a high rate, so that the
# curve falls fast (8.0 -> 6.7 in 8 steps) and any difference would show and grow.
TRAIN = dict(model="demo", max_steps=8, max_length=64, logging_steps=1, save_steps=100, validation_split=0.0,
             learning_rate=1e-2, lora_dropout=0.0, precision="fp32", seed=7)
# Measured on this machine (2 cores), first 48 identity rows, 8 steps, random batches:
#   1 process,  batch 4  loss 7.98886 7.96607 7.53772 7.36321 7.01301 7.06940 6.77313 6.68111
#   2 processes, batch 2 loss 7.98886 7.96607 7.53772 7.36321 7.01301 7.06940 6.77313 6.68111
#   (grad norms within 3e-6; the one-process run with 2 threads instead of 1 differs as little)
#   1 process,  batch 2  loss 8.10032 7.75316 7.81612 7.42086 7.23939 7.04457 6.63056 7.51899
# With length-grouped batches (group_by_length, the default since) the two agree as exactly:
#   8.03163 8.00911 7.87232 7.46519 7.60099 6.77881 7.31917 6.39893 for both.
# So the tolerances leave a 100x margin over float rounding, and are 100x below what another
# effective batch (or unsynchronised, or wrongly weighted, gradients) does.
LOSS_TOL = 1e-3        # absolute, per step
GRAD_NORM_RTOL = 1e-3  # relative, per step: the synchronised gradient itself, before clipping


def _curves(store, run_id) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for p in store.metrics(run_id):
        if p.name in ("loss", "grad_norm", "learning_rate"):
            out.setdefault(p.name, []).append(p.value)
    return out


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_cpu_processes_follow_one_process_and_stop_resume_like_it(tmp_path, store, demo_model):
    from components.common import AppContext
    from components.train_tab import resume_training, run_view, start_training, stop_training
    from core.engine import prepare_run, run_training
    from core.events import EventLog, read_events
    from core.jobs import JobManager
    from core.records import RecordStore

    rows = json.loads((ROOT / "assets" / "examples" / "identity.json").read_text())[:48]
    data = tmp_path / "identity48.json"
    data.write_text(json.dumps(rows))
    t0 = time.time()
    one = RunConfig(dataset=str(data), batch_size=4, **TRAIN)
    base_store = RecordStore(f"sqlite:///{tmp_path / 'baseline.db'}")
    config, base_id, base_dir = prepare_run(one, base_store)
    result = run_training(config, base_store, EventLog(base_id), base_id, base_dir)
    assert result.status == "completed", result.error
    baseline = _curves(base_store, base_id)
    t_base = time.time() - t0

    # The same run on two processes, through the app's Train tab handlers: start, stop, resume.
    ctx = AppContext(store=store, jobs=JobManager(store))
    two = one.replace(batch_size=2, num_processes=2, distributed="ddp")
    run_id = start_training(ctx, two)["run_id"]
    # Stop as soon as rank 0 reports in: the stop file is there before the first step ends, so
    # every rank stops after step 1 (deterministically) and saves checkpoint-1.
    _wait_for(lambda: any(e.type == "started" for e in ctx.jobs.events(run_id)), 240, "the workers to start")
    stop_training(ctx, run_id)
    assert ctx.jobs.wait(run_id, timeout=240) == "cancelled"
    view = run_view(ctx, run_id)
    assert view.status == "cancelled" and view.step == 1 and len(view.series["loss"]) == 1
    run_dir = Path(store.get_run(run_id).output_dir)
    assert (run_dir / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()
    assert (run_dir / distributed.ACCELERATE_CONFIG).exists() and not (run_dir / "model").exists()

    # (JobManager retires a run just after its terminal event: resume once it has.)
    _wait_for(lambda: ctx.jobs.current is None, 30, "the job manager to retire the run")
    resume_training(ctx, run_id)
    assert ctx.jobs.wait(run_id, timeout=240) == "completed", store.get_run(run_id).error
    t_ddp = time.time() - t0 - t_base

    run = store.get_run(run_id)
    model = store.get_model(run.model_id)
    assert model.run_id == run_id and Path(model.path, "adapter_model.safetensors").exists()
    assert json.loads(Path(model.path, "modelforge.json").read_text())["model_id"] == model.id
    assert run.attempts == 2
    view = run_view(ctx, run_id)
    assert view.status == "completed" and view.model_id == model.id and view.step == 8

    # The events: one file, written once (by rank 0), and the same in memory as on disk.
    on_disk = [(e.type, e.step) for e in read_events(run_dir / "events.jsonl")]
    in_memory = [(e.type, e.step) for e in ctx.jobs.events(run_id)]
    assert on_disk[-len(in_memory):] == in_memory  # memory holds the resumed attempt
    assert [s for t, s in on_disk if t == "step"] == list(range(1, 9))  # each step once
    assert [t for t, _ in on_disk].count("started") == 2 and on_disk[-1][0] == "finished"

    ddp = _curves(store, run_id)
    print(f"\none process, batch 4:       {' '.join(f'{v:.5f}' for v in baseline['loss'])}"
          f"\ntwo processes, batch 2 each: {' '.join(f'{v:.5f}' for v in ddp['loss'])}"
          f"\nbaseline {t_base:.0f} s; two processes, stopped after step 1 and resumed: {t_ddp:.0f} s")
    assert len(ddp["loss"]) == len(baseline["loss"]) == 8
    for name, tol in (("loss", LOSS_TOL), ("learning_rate", 1e-12)):
        assert ddp[name] == pytest.approx(baseline[name], abs=tol), name
    assert ddp["grad_norm"] == pytest.approx(baseline["grad_norm"], rel=GRAD_NORM_RTOL)
    assert baseline["loss"][-1] < baseline["loss"][0] - 0.8  # the curve really moved


@pytest.mark.skipif(os.environ.get("MODELFORGE_TEST_MULTINODE") != "1",
                    reason="two machines on loopback take ~40 s more: set MODELFORGE_TEST_MULTINODE=1 (CI does)")
def test_two_machines_on_loopback(tmp_path, store, demo_model):
    """The multi-node command lines, both 'machines' on this host: machine_rank 0 and 1 meet at
    127.0.0.1:PORT, one process each. The main machine's run gets the events, curve and model;
    the other's run ends completed, without a model of its own."""
    import socket
    import threading

    from core.engine import prepare_run, run_training
    from core.events import EventLog

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    results = {}

    def machine(rank: int) -> None:
        config = RunConfig(dataset=str(ROOT / "assets" / "examples" / "identity.json"), batch_size=2,
                           **{**TRAIN, "max_steps": 3}, num_processes=2, num_machines=2, machine_rank=rank,
                           main_process_ip="127.0.0.1", main_process_port=port, name=f"machine{rank}")
        config, run_id, run_dir = prepare_run(config, store)
        events = EventLog(run_id)
        results[rank] = (run_training(config, store, events, run_id, run_dir), events)

    threads = [threading.Thread(target=machine, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    (main, main_events), (other, other_events) = results[0], results[1]
    assert main.status == other.status == "completed", (main.error, other.error)
    assert main.model_id and store.get_model(main.model_id).run_id == main.run_id and other.model_id is None
    assert [e.step for e in main_events.events if e.type == "step"] == [1, 2, 3]
    assert [e.type for e in other_events.events] == ["log", "finished"]
    assert [p.name for p in store.metrics(other.run_id)] == []


def test_a_provider_that_patches_the_process_trains_in_a_child_process_in_the_app(tmp_path, store, demo_model,
                                                                                    monkeypatch):
    """unsloth patches transformers for the whole process: in the app (a long-lived process) its
    runs train in a plain child process, so later runs and the Playground see the libraries
    untouched. The path is provider-independent; a provider that says it patches is stood in
    by huggingface here (unsloth needs a GPU or its own venv, where tests/test_unsloth.py runs)."""
    from components.common import AppContext
    from components.train_tab import resume_training, run_view, start_training, stop_training
    from core.jobs import JobManager
    from core.providers.huggingface import HuggingFaceProvider
    from core.registry import PROVIDERS

    assert PROVIDERS.get("unsloth").own_process and not PROVIDERS.get("huggingface").own_process
    assert not distributed.wants_own_process(RunConfig(provider="huggingface"))
    monkeypatch.setattr(HuggingFaceProvider, "own_process", True)
    assert distributed.wants_own_process(RunConfig(provider="huggingface"))

    rows = json.loads((ROOT / "assets" / "examples" / "identity.json").read_text())[:24]
    data = tmp_path / "identity24.json"
    data.write_text(json.dumps(rows))
    ctx = AppContext(store=store, jobs=JobManager(store))
    config = RunConfig(dataset=str(data), batch_size=4, **TRAIN)
    run_id = start_training(ctx, config)["run_id"]
    _wait_for(lambda: any(e.type == "started" for e in ctx.jobs.events(run_id)), 240, "the child to start")
    stop_training(ctx, run_id)
    assert ctx.jobs.wait(run_id, timeout=240) == "cancelled"
    run_dir = Path(store.get_run(run_id).output_dir)
    assert any("training in a child process" in (e.data.get("message") or "") for e in ctx.jobs.events(run_id))
    assert not (run_dir / distributed.ACCELERATE_CONFIG).exists()  # a plain child, no accelerate
    assert "-m core.worker" in (run_dir / distributed.DIST_DIR / distributed.LAUNCH_LOG).read_text()
    _wait_for(lambda: ctx.jobs.current is None, 30, "the job manager to retire the run")
    resume_training(ctx, run_id)
    assert ctx.jobs.wait(run_id, timeout=240) == "completed", store.get_run(run_id).error
    run = store.get_run(run_id)
    view = run_view(ctx, run_id)
    assert view.status == "completed" and view.model_id == run.model_id and view.step == TRAIN["max_steps"]
    assert Path(store.get_model(run.model_id).path, "adapter_model.safetensors").exists()
