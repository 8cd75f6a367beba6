"""Training on several devices or machines: the same engine, started by ``accelerate launch``.

The in-process engine (:func:`core.engine.run_training`) trains on one device. When a run asks
for ``num_processes > 1``, the engine hands it to :func:`run_distributed`, which

1. writes an accelerate config generated from the run config into the run folder
   (``accelerate_config.yaml``: number of processes and machines, mixed precision, DDP, FSDP or
   DeepSpeed ZeRO, the main machine's address) beside a copy of the run config;
2. starts ``python -m accelerate.commands.launch --config_file ... -m core.worker`` as a child
   process (its own session, so a terminal's Ctrl-C reaches only this process, which turns it
   into a graceful stop); accelerate starts one :mod:`core.worker` per device, and each runs the
   same in-process engine;
3. follows the run: the main process (global rank 0) writes the run's ``events.jsonl``, metrics,
   heartbeats, checkpoints and, at the end, the model and its record, exactly as an in-process
   run does; the other ranks train and write nothing of that. This process tails
   ``events.jsonl`` and re-emits every event into the caller's in-memory :class:`EventLog`, so the
   Train tab, the CLI's progress line and ``JobManager.wait`` see a multi-process run like a
   single one;
4. stops it on request: the run's stop file (``distributed/stop``) is checked by every rank after
   each optimizer step and agreed through an all-reduce, so all ranks stop after the same step
   and save a checkpoint; SIGTERM follows if the processes do not end in time, SIGKILL after that;
5. returns rank 0's :class:`~core.run.RunResult`; when the processes died without one, it
   records the run as failed (or cancelled, after a stop) and emits the terminal event itself.

Resume works as for one process: the engine passes ``resume_from`` and every rank resumes from
that checkpoint.

Why a child process rather than ``torch.multiprocessing`` in the app: accelerate's launcher
(torchrun underneath) is the tested way to start DDP/FSDP/DeepSpeed on one or many machines, and
a crash of a training process cannot take the app down with it.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import RunConfig
from core.errors import ModelForgeError, Problem
from core.models import train_dtype
from core.registry import PROVIDERS, STRATEGIES
from core.run import RunResult

if TYPE_CHECKING:  # pragma: no cover
    from core.events import EventLog
    from core.records import RecordStore

log = logging.getLogger("modelforge.distributed")

DIST_DIR = "distributed"                     # inside the run folder
ACCELERATE_CONFIG = "accelerate_config.yaml"  # inside the run folder, where a user looks for it
RUN_CONFIG = "run_config.json"               # the exact config every rank trains with
STOP_FILE = "stop"
LAUNCH_LOG = "launch.log"                    # stdout/stderr of accelerate and of every rank

# Set in the environment of the launched processes.
WORKER_ENV = "MODELFORGE_DISTRIBUTED_WORKER"
STOP_FILE_ENV = "MODELFORGE_STOP_FILE"
PARENT_PID_ENV = "MODELFORGE_PARENT_PID"

# DeepSpeed's ZeRO stage for distributed=deepspeed. 2 shards optimizer state and gradients: a
# large saving for full fine-tuning at nearly DDP speed; LoRA has little of either, so 3 (which
# also shards the parameters) is FSDP's job here (distributed=fsdp).
DEEPSPEED_ZERO_STAGE = 2
# After Stop the processes finish their step and save a checkpoint. A step of a big model can take
# minutes, so they get this long before SIGTERM; then KILL_AFTER_S more before SIGKILL.
STOP_GRACE_S = 300.0
KILL_AFTER_S = 60.0
HEARTBEAT_EVERY_S = 30.0
POLL_S = 0.2


# -- where this process stands ---------------------------------------------------------------------
def is_worker() -> bool:
    """True inside a process started by :func:`run_distributed` (it must not launch again)."""
    return os.environ.get(WORKER_ENV) == "1"


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """The process that writes events, records and the model: global rank 0 (or the only one)."""
    return rank() == 0


def wants_launch(config: RunConfig) -> bool:
    """Whether the engine should hand this run to :func:`run_distributed`."""
    return (config.num_processes > 1 or config.num_machines > 1) and not is_worker()


def wants_own_process(config: RunConfig) -> bool:
    """Whether a one-process run should still train in a child process when the caller lives on
    (the app): its provider patches libraries for the whole process (unsloth patches transformers,
    peft and trl at import), which would change every later run and the Playground's models.
    Each plugin declares it (``own_process``)."""
    if is_worker():
        return False
    return any(plugin is not None and plugin.own_process
               for plugin in (PROVIDERS.find(config.provider), STRATEGIES.find(config.strategy)))


def _single(config: RunConfig) -> bool:
    """One process on one machine: a plain child process, no accelerate."""
    return config.num_processes <= 1 and config.num_machines <= 1


# -- stop: asked for by the parent, agreed by every rank --------------------------------------------
def stop_file_present() -> bool:
    """In a launched worker: the parent asked to stop (the stop file exists) or the parent is gone.

    Always False outside a worker. A parent that died (the app killed) leaves nobody to show or
    stop the run, so the workers stop after their step and keep a checkpoint to resume from.
    """
    from core.records import pid_alive

    path = os.environ.get(STOP_FILE_ENV)
    if path and os.path.exists(path):
        return True
    parent = os.environ.get(PARENT_PID_ENV)
    return bool(parent and parent.isdigit() and not pid_alive(int(parent)))


def agree(flag: bool, device: Any = None) -> bool:
    """``flag`` OR-ed over every process of the run (itself when not distributed).

    Every rank must call it at the same point (after each optimizer step): a stop seen by one
    rank alone would leave the others waiting in the next step's all-reduce forever.
    """
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it
        return flag
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    import torch

    t = torch.tensor([1.0 if flag else 0.0], device=device if device is not None else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# -- the accelerate config -------------------------------------------------------------------------
def _mixed_precision(dtype: str) -> str:
    return {"bf16": "bf16", "fp16": "fp16"}.get(dtype, "no")


def accelerate_config(config: RunConfig, gpus: int, dtype: str) -> dict:
    """The ``accelerate launch`` config for a run, as a mapping (see :func:`write_accelerate_config`).

    Args:
        config: the run config (num_processes, distributed, num_machines, machine_rank,
            main_process_ip, main_process_port).
        gpus: NVIDIA GPUs on this machine; 0 means CPU processes (DDP over gloo only).
        dtype: the run's mixed precision as the engine chose it ('bf16', 'fp16' or 'fp32').
    """
    use_cpu = gpus == 0
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_CPU" if use_cpu else "MULTI_GPU",
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
        "gpu_ids": "all",
        "machine_rank": config.machine_rank,
        "main_training_function": "main",
        "mixed_precision": _mixed_precision(dtype),
        "num_machines": config.num_machines,
        "num_processes": config.num_processes,
        "rdzv_backend": "static",
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        "use_cpu": use_cpu,
    }
    if config.num_machines > 1:
        out["main_process_ip"] = config.main_process_ip.strip()
        out["main_process_port"] = config.main_process_port
    else:
        out["main_process_port"] = 0  # one machine: accelerate picks a free port (runs may overlap)
    if config.distributed == "fsdp":
        out["distributed_type"] = "FSDP"
        out["fsdp_config"] = {
            # FSDP2 (torch's fully_shard): the version transformers 5 and accelerate 1.x recommend.
            "fsdp_version": 2,
            # Wrap each decoder layer (the model's _no_split_modules): shards layer by layer.
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            # Free the gathered parameters after each layer's forward: least memory, some speed.
            "fsdp_reshard_after_forward": True,
            "fsdp_offload_params": False,          # True: parameters in CPU RAM, much slower
            # Checkpoints as one shard per rank (fast, resumable); the final model is gathered
            # into one file by the Trainer's save_model.
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": False,  # every rank loads the model itself
            "fsdp_activation_checkpointing": False,   # the run config's gradient_checkpointing does it
        }
    elif config.distributed == "deepspeed":
        out["distributed_type"] = "DEEPSPEED"
        out["deepspeed_config"] = {
            "zero_stage": DEEPSPEED_ZERO_STAGE,
            "offload_optimizer_device": "none",   # "cpu": optimizer state in RAM, slower
            "offload_param_device": "none",
            "zero3_init_flag": False,
            # torchrun on every machine, started by the same `modelforge train` command (no ssh).
            "deepspeed_multinode_launcher": "standard",
            # gradient_accumulation_steps and gradient_clipping are left out: DeepSpeed's "auto"
            # takes them from the Trainer, so they can never disagree with the run config.
        }
    return out


def write_accelerate_config(config: RunConfig, run_dir: Path, gpus: int, dtype: str) -> Path:
    """Write ``accelerate_config.yaml`` into the run folder (it documents how the run was launched)."""
    import yaml

    path = Path(run_dir) / ACCELERATE_CONFIG
    head = ("# Generated by ModelForge from the run config (num_processes, distributed, num_machines, ...).\n"
            "# Used as: accelerate launch --config_file THIS_FILE -m core.worker ...\n")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(head + yaml.safe_dump(accelerate_config(config, gpus, dtype), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


def launch_command(config_file: Path, run_dir: Path, run_id: str, resume_from: str | None,
                   cpu: bool, distributed: str = "ddp") -> list[str]:
    """The child process's command line.

    On CPU the config says MULTI_CPU, whose own launcher starts several processes only through
    mpirun; ``--multi_gpu`` picks accelerate's torchrun launcher instead, which starts the CPU
    processes just as well (the workers' TrainingArguments say use_cpu, so they meet over gloo).
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    if cpu and distributed == "ddp":
        cmd.append("--multi_gpu")
    cmd += ["-m", "core.worker", "--run-dir", str(run_dir), "--run-id", run_id]
    if resume_from:
        cmd += ["--resume", str(resume_from)]
    return cmd


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable torch CUDA: CPU processes
        return 0


def launch_problems(config: RunConfig, gpus: int) -> list[Problem]:
    """What stops this machine from launching the run (validate_config checked the fields)."""
    import importlib.util

    problems: list[Problem] = []
    per_machine = max(config.num_processes // max(config.num_machines, 1), 1)
    if gpus == 0 and config.distributed != "ddp":
        problems.append(Problem(f"{config.distributed} needs NVIDIA GPUs; this machine has none",
                                "use distributed ddp (CPU processes, for trials) or a GPU machine",
                                field="distributed"))
    if gpus and per_machine > gpus:
        problems.append(Problem(f"{per_machine} processes per machine but only {gpus} GPU(s) here",
                                f"set num_processes to at most {gpus * config.num_machines}",
                                field="num_processes"))
    if config.distributed == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        problems.append(Problem("distributed deepspeed needs the deepspeed package",
                                "pip install deepspeed (on the GPU machine), or use fsdp", field="distributed"))
    return problems


# -- the parent: launch, follow, stop ---------------------------------------------------------------
def _pump(path: Path, offset: int, events: "EventLog") -> int:
    """Re-emit the complete lines of ``path`` after ``offset`` into ``events``; return the new offset."""
    from core.events import Event

    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return offset  # a line being written: wait for its end
    for line in chunk[: end + 1].splitlines():
        try:
            ev = Event.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError):
            continue
        data = {k: v for k, v in ev.data.items() if k not in ("type", "step", "total_steps")}
        events.emit(ev.type, step=ev.step, total_steps=ev.total_steps, **data)
    return offset + end + 1


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _read_result(dist_dir: Path, name: str) -> dict | None:
    try:
        return json.loads((dist_dir / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_distributed(config: RunConfig, store: "RecordStore", events: "EventLog", run_id: str, run_dir: Path,
                    stop_event: threading.Event | None = None, resume_from: str | None = None) -> "RunResult":
    """Train a prepared run in ``config.num_processes`` processes; same contract as run_training.

    Never raises (but a second Ctrl-C, KeyboardInterrupt, ends the processes and propagates).
    """
    from core.events import EventLog
    from core.records import utcnow

    stop_event = stop_event or threading.Event()
    run_dir = Path(run_dir)
    dist_dir = run_dir / DIST_DIR
    dist_dir.mkdir(parents=True, exist_ok=True)
    events_path = run_dir / "events.jsonl"
    # What was emitted before the run started (e.g. "queued") goes to the file, as in-process;
    # from here on rank 0 and this function write the file, and _pump fills ``events``.
    if events.path is None:
        with events_path.open("a", encoding="utf-8") as fh:
            for ev in events.since(0):
                fh.write(ev.to_json() + "\n")
    events.path = None  # never write twice: the file is the channel, memory follows it
    offset = events_path.stat().st_size if events_path.exists() else 0
    writer = EventLog(run_id, events_path)  # this process's own events, through the same file

    def fail(message: str, hint: str, status: str = "failed", problems: list | None = None,
             fault: bool = False) -> RunResult:
        nonlocal offset
        try:
            store.finish_run(run_id, status, error=f"{message} (fix: {hint})" if hint else message)
        except Exception:  # noqa: BLE001 - the events file still says what happened
            log.exception("could not record the end of %s", run_id)
        if status == "cancelled":
            writer.emit("cancelled", message=message)
        else:
            writer.emit("failed", message=message, hint=hint, problems=[p.to_dict() for p in problems or []])
        offset = _pump(events_path, offset, events)
        return RunResult(run_id, status, str(run_dir), error=None if status == "cancelled" else message,
                         hint=hint, fault=fault)

    try:  # everything before the launch: any failure ends the run as failed, never as an exception
        gpus = _gpu_count()
        problems = [] if _single(config) else launch_problems(config, gpus)
        if problems:
            return fail(f"cannot launch {config.num_processes} processes: " + "; ".join(p.message for p in problems),
                        problems[0].hint, problems=problems)
        device = "cuda" if gpus else "cpu"
        dtype = train_dtype(config, device)
        from core.demo_model import demo_path, is_demo

        if is_demo(config.model):
            demo_path()  # built once here: every rank building it at once would race on the cache folder
        (dist_dir / RUN_CONFIG).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
        config_file = None if _single(config) else write_accelerate_config(config, run_dir, gpus, dtype)
        stop_file = dist_dir / STOP_FILE
        stop_file.unlink(missing_ok=True)  # a resumed run must not stop at once
        for old in dist_dir.glob("result*.json"):
            old.unlink()
        if config_file is None:  # the same worker, started directly: it is rank 0 of a world of one
            cmd = [sys.executable, "-m", "core.worker", "--run-dir", str(run_dir), "--run-id", run_id]
            cmd += ["--resume", str(resume_from)] if resume_from else []
        else:
            cmd = launch_command(config_file, run_dir, run_id, resume_from, cpu=gpus == 0,
                                 distributed=config.distributed)
        from core.paths import REPO_ROOT

        env = dict(os.environ)
        env.update({
            WORKER_ENV: "1",
            STOP_FILE_ENV: str(stop_file),
            PARENT_PID_ENV: str(os.getpid()),
            "MODELFORGE_DATABASE_URL": store.url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")])),
            "PYTHONUNBUFFERED": "1",
        })
        if gpus == 0 and config_file is not None:
            env["ACCELERATE_USE_CPU"] = "true"
            # Plain "cpu", not accelerate's per-rank "cpu:N": the Trainer loads the optimizer state of a
            # checkpoint with map_location=args.device, and torch cannot map to "cpu:1" (resume fails).
            env["ACCELERATE_TORCH_DEVICE"] = "cpu"
            # One thread per process: more would only fight over the same cores.
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(config.num_processes, 1))))
        # The child's heartbeat owner is the child; until its first beat this process vouches for the
        # run, so a store opened meanwhile does not take it for a crashed one.
        store.update_run(run_id, pid=os.getpid(), heartbeat_at=utcnow())
        where = f"{config.num_machines} machines, this one rank {config.machine_rank}" if config.num_machines > 1 else "this machine"
        if config_file is None:
            writer.emit("log", message=f"training in a child process: the {config.provider} provider patches "
                                       "transformers for the whole process, and this one serves other runs and "
                                       "the Playground")
        else:
            writer.emit("log", message=f"launching {config.num_processes} {config.distributed} processes on {where} "
                                       f"({'CPU, gloo' if gpus == 0 else f'{gpus} GPU(s)'}) with accelerate; "
                                       f"config {config_file.name}")
        launch_log = dist_dir / LAUNCH_LOG
        with launch_log.open("a", encoding="utf-8") as fh:
            fh.write(f"\n$ {shlex.join(cmd)}\n")
        log_fh = launch_log.open("ab")
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as exc:
            log_fh.close()
            return fail(f"could not start accelerate: {exc}", "check that accelerate is installed", fault=True)
    except ModelForgeError as exc:
        return fail(exc.message, exc.hint, problems=exc.problems)
    except Exception as exc:  # noqa: BLE001 - same contract as run_training: never raises
        log.exception("could not launch %s", run_id)
        return fail(f"could not launch the processes: {type(exc).__name__}: {exc}",
                    "see the log of this process for the details", fault=True)
    stop_sent = term_sent = kill_sent = None
    last_beat = time.time()
    try:
        while True:
            offset = _pump(events_path, offset, events)
            rc = proc.poll()
            if rc is not None:
                break
            now = time.time()
            if stop_event.is_set() and stop_sent is None:
                stop_file.write_text(f"stop requested at {time.ctime()}\n", encoding="utf-8")
                stop_sent = now
            if stop_sent is not None and term_sent is None and now - stop_sent > STOP_GRACE_S:
                log.warning("run %s did not stop within %.0f s: SIGTERM", run_id, STOP_GRACE_S)
                _signal_group(proc, signal.SIGTERM)
                term_sent = now
            if term_sent is not None and kill_sent is None and now - term_sent > KILL_AFTER_S:
                _signal_group(proc, signal.SIGKILL)
                kill_sent = now
            if now - last_beat > HEARTBEAT_EVERY_S:
                last_beat = now
                try:
                    store.update_run(run_id, heartbeat_at=utcnow())
                except Exception:  # noqa: BLE001 - a missed beat is not worth ending the run
                    log.warning("heartbeat of %s failed", run_id, exc_info=True)
            time.sleep(POLL_S)
    except BaseException:  # a second Ctrl-C or the like: the processes must not outlive us
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
        raise
    finally:
        log_fh.close()
    time.sleep(POLL_S)
    offset = _pump(events_path, offset, events)

    result = _read_result(dist_dir, "result.json")
    if result is not None:
        return RunResult(**{k: v for k, v in result.items() if k in RunResult.__dataclass_fields__})
    run = store.get_run(run_id)
    if run.status not in ("queued", "running"):  # rank 0 recorded the end, then died before its result file
        return RunResult(run_id, run.status, str(run_dir), model_id=run.model_id, error=run.error)
    local = _read_result(dist_dir, "result-local.json") or {}
    if config.machine_rank > 0 and rc == 0:
        # Another machine: its processes trained their share; rank 0, on the main machine, wrote
        # the events, checkpoints, model and record there. This run says how it ended here.
        where = f"machine {config.machine_rank} of {config.num_machines}"
        if local.get("status") == "cancelled":
            store.finish_run(run_id, "cancelled", error="stopped on the main machine")
            writer.emit("cancelled", message=f"{where}: stopped with the main machine, which kept the checkpoint")
        else:
            store.finish_run(run_id, "completed")
            writer.emit("finished", message=f"{where} done; the model is saved on the main machine "
                                            "(machine_rank 0)", metrics={})
        offset = _pump(events_path, offset, events)
        return RunResult(run_id, local.get("status") or "completed", str(run_dir))
    if stop_sent is not None:
        return fail("stopped by the user; the processes had to be ended, so the last checkpoint is the one "
                    "to resume from", "resume the run to continue", status="cancelled")
    other = next((r for r in (_read_result(dist_dir, p.name) for p in sorted(dist_dir.glob("result-*.json")))
                  if r and r.get("error")), None)
    if other is not None:
        return fail(other["error"], other.get("hint") or "", fault=bool(other.get("fault")))
    tail = _tail(launch_log)
    log.error("run %s: the training processes exited with code %s:\n%s", run_id, rc, tail)
    return fail(f"the training processes exited with code {rc} before finishing",
                f"see {launch_log} for their output", fault=True)
