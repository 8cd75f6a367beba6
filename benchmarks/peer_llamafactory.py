"""Peer: the same fine-tuning job, whole, through ModelForge's CLI and through LLaMA-Factory's.

LLaMA-Factory (the ``llamafactory`` package, pinned below) lives in its own venv,
``tmp/venv-llamafactory`` (git-ignored, installed on the first ``--quick``/``--full`` run and
reused while it holds that version; ``--smoke`` never installs it). The job is the same for
both: the ~29M-parameter benchmark Llama (a local folder), the first rows of alpaca_en_demo.json,
one epoch, ModelForge's defaults written out for both (batch 4, no gradient accumulation, max
length = LLaMA-Factory's ``cutoff_len`` 512, LoRA r8 / alpha 16 / dropout 0.05 on every linear
layer, learning rate 2e-4 linear with no warm-up, seed 42, a loss logged every 5 steps, a
checkpoint every 100 steps and at the end, the adapter saved), no evaluation. ModelForge renders
an alpaca row as a user turn (instruction and input joined by a newline) and an assistant turn,
with the model's chat template, ChatML (it uses ChatML for a model with none as well), so
LLaMA-Factory gets its ``chatml`` template, which writes the same text: the same real tokens
are counted in both.

Each job runs from process start to exit (adapter and final checkpoint written):
``python -m app.main train ...`` with this checkout, ``llamafactory-cli train job.yaml`` from the
peer's venv, at the same torch thread count. Jobs alternate (A B C, then C B A, ...); medians of
the per-repetition ratios are reported. Two comparisons:

- default settings each: ModelForge's defaults (``precision: auto``, which on a CPU with bf16
  matrix units is bf16 weights with fp32 adapters under bf16 autocast; length grouping;
  ``compile: auto``); LLaMA-Factory's defaults, which on a CPU mean fp32 (with no bf16/fp16 flag
  it infers the compute dtype from GPU/NPU support only) and random batches, no packing;
- matched batching and precision: LLaMA-Factory also given ``bf16: true`` (autocast, its trainable
  parameters cast to fp32), ``train_sampling_strategy: group_by_length`` and the same model saved in
  bf16 (it loads weights in the checkpoint's dtype; ModelForge casts the fp32 weights to bf16 on
  load, the same values), so both train bf16 weights with fp32 adapters under bf16 autocast; and
  ``disable_gradient_checkpointing: true``: LLaMA-Factory checkpoints activations by default (less
  memory, slower steps), ModelForge does not.

Counted the same way in both (benchmarks/job_clock/sitecustomize.py, put on both processes'
PYTHONPATH): a callback added to transformers' default callbacks stamps train begin and each
step's end, and a forward pre-hook counts real (attention-mask) tokens, computed tokens and
supervised tokens. Training tokens/s = real tokens / training-loop time; the rest of the wall
time is start-up, data preparation and saving.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import (ROOT, Unavailable, alpaca_rows, build_model, child_env, figure, median, n_params, rnd)

PEER = "llamafactory"
PEER_VERSION = "0.9.5"
VENV = ROOT / "tmp" / "venv-llamafactory"
PEER_GB = 2.2  # the venv's size on disk, measured (torch CPU included)
CLOCK = ROOT / "benchmarks" / "job_clock"
SIZES = {  # rows: the first rows of alpaca_en_demo (one epoch); reps: rounds of the three jobs
    "quick": dict(rows=160, reps=3, timeout=1500),
    "full": dict(rows=999, reps=5, timeout=5400),
}
JOBS = ("modelforge", "llamafactory defaults", "llamafactory matched")
WALL = {  # the two comparisons the issue asks for: their figure names, in the table and in results.json
    "defaults": "whole job wall time, ModelForge / LLaMA-Factory, default settings each",
    "matched": "whole job wall time, ModelForge / LLaMA-Factory, matched batching and precision "
               "(and no gradient checkpointing)",
}
SKIPPED = f"skipped in smoke mode: installs LLaMA-Factory (~{PEER_GB:.0f} GB) in its own venv; run --quick"


# -- the peer's venv -------------------------------------------------------------------------------------
def _py() -> Path:
    return VENV / "bin" / "python"


def stand_ins() -> Path:
    """A folder for the peer's PYTHONPATH holding an importable stand-in for ``torchaudio``.

    LLaMA-Factory imports torchaudio at start (for audio data); PyPI has no torchaudio for the
    CPU torch 2.13 wheel, and the one pip picks fails to load against it. A text job never
    calls it: any use raises ImportError saying why."""
    folder = VENV / "stand-ins"
    (folder / "torchaudio").mkdir(parents=True, exist_ok=True)
    (folder / "torchaudio" / "__init__.py").write_text(
        '"""Stand-in written by benchmarks/peer_llamafactory.py: the benchmark trains on text only."""\n\n\n'
        "def __getattr__(name):\n"
        "    raise ImportError('torchaudio stand-in (benchmarks/peer_llamafactory.py): no audio in this benchmark')\n")
    return folder


def peer_versions() -> dict | None:
    """The peer venv's package versions, or None when it has no LLaMA-Factory."""
    if not _py().exists():
        return None
    code = ("import json; from importlib import metadata as m\nout = {}\n"
            "for d in ('llamafactory', 'torch', 'transformers', 'trl', 'peft', 'accelerate', 'datasets'):\n"
            "    try: out[d] = m.version(d)\n    except m.PackageNotFoundError: out[d] = None\nprint(json.dumps(out))")
    proc = subprocess.run([str(_py()), "-c", code], capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


def ensure_peer() -> dict:
    """The peer's venv with ``llamafactory==PEER_VERSION``: reused, or (re)built. Returns how.

    Raises:
        Unavailable: pip could not install it (offline, say); one line saying why.
    """
    marker = VENV / "modelforge-install.json"
    have = peer_versions()
    if have and have.get(PEER) == PEER_VERSION and marker.exists():
        return {**json.loads(marker.read_text()), "reused": True, "versions": have}
    from importlib import metadata

    shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    # Our torch pin, so that pip takes the CPU wheel on disk instead of downloading a
    # multi-GB CUDA build (LLaMA-Factory leaves torch unpinned).
    torch_pin = metadata.version("torch").split("+")[0]
    t0 = time.time()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, text=True,
                       timeout=300)
        pins = VENV / "constraints.txt"
        pins.write_text(f"torch=={torch_pin}\n")
        subprocess.run([str(_py()), "-m", "pip", "install", "-q", "-c", str(pins), f"{PEER}=={PEER_VERSION}"],
                       check=True, capture_output=True, text=True, timeout=1800)
        # torchvision/torchaudio from PyPI are built against another torch and fail to load
        # beside the CPU wheel; transformers works without them (torchaudio: see stand_ins).
        subprocess.run([str(_py()), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio"],
                       check=True, capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        lines = [ln for ln in (exc.stderr or "").splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise Unavailable(f"LLaMA-Factory could not be installed into {VENV}: "
                          f"{lines[-1] if lines else f'exit status {exc.returncode}'}") from None
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"LLaMA-Factory's install into {VENV} did not finish in {exc.timeout:.0f} s") from None
    info = {"install_s": round(time.time() - t0, 1), "installed_at": time.strftime("%Y-%m-%d %H:%M"),
            "torch_constraint": f"torch=={torch_pin}"}
    marker.write_text(json.dumps(info))
    return {**info, "reused": False, "versions": peer_versions()}


# -- the job ------------------------------------------------------------------------------------------------
def job_settings() -> dict:
    """ModelForge's defaults, written out for both programs (one source: RunConfig)."""
    from core.config import RunConfig

    c = RunConfig()
    return {"batch": c.batch_size, "grad_accum": c.gradient_accumulation_steps, "max_length": c.max_length,
            "lora_r": c.lora_r, "lora_alpha": c.lora_alpha, "lora_dropout": c.lora_dropout,
            "lr": c.learning_rate, "scheduler": c.lr_scheduler, "warmup": c.warmup_steps, "seed": c.seed,
            "logging_steps": c.logging_steps, "save_steps": c.save_steps, "epochs": 1}


def write_data(folder: Path, rows: int) -> Path:
    """The rows as one alpaca file, with the dataset_info.json LLaMA-Factory reads beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "alpaca_bench.json"
    path.write_text(json.dumps(alpaca_rows(rows), ensure_ascii=False), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({"alpaca_bench": {"file_name": path.name}}))
    return path


def bf16_copy(model_dir: Path) -> Path:
    """The same model saved in bf16 (cached beside it), for LLaMA-Factory's matched job.

    LLaMA-Factory loads weights in the checkpoint's own dtype (``torch_dtype="auto"``) whatever
    its ``bf16`` flag says, and the benchmark model is saved in fp32; its ``pure_bf16`` would put
    the adapters in bf16 too, and it refuses that without a GPU. ModelForge's ``precision: auto``
    casts the fp32 weights to bf16 on load: the same values this copy holds (most hub models are
    published in bf16 anyway)."""
    out = model_dir.with_name(model_dir.name + "-bf16")
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
    tmp.replace(out)
    return out


def modelforge_command(s: dict, model_dir: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "app.main", "train", "--model", str(model_dir), "--dataset", str(data),
            "--validation-split", "0", "--num-epochs", str(s["epochs"]), "--batch-size", str(s["batch"]),
            "--gradient-accumulation-steps", str(s["grad_accum"]), "--max-length", str(s["max_length"]),
            "--lora-r", str(s["lora_r"]), "--lora-alpha", str(s["lora_alpha"]),
            "--lora-dropout", str(s["lora_dropout"]),
            "--lora-target-modules", "all-linear", "--learning-rate", str(s["lr"]), "--lr-scheduler", s["scheduler"],
            "--warmup-steps", str(s["warmup"]), "--seed", str(s["seed"]), "--logging-steps", str(s["logging_steps"]),
            "--save-steps", str(s["save_steps"]), "--output-dir", str(out), "--name", "peer-bench", "--json"]


def peer_config(s: dict, model_dir: Path, data: Path, out: Path, matched: bool) -> dict:
    cfg = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
           "lora_rank": s["lora_r"], "lora_alpha": s["lora_alpha"], "lora_dropout": s["lora_dropout"],
           "lora_target": "all", "dataset": "alpaca_bench", "dataset_dir": str(data.parent), "template": "chatml",
           "cutoff_len": s["max_length"], "output_dir": str(out), "logging_steps": s["logging_steps"],
           "save_steps": s["save_steps"], "per_device_train_batch_size": s["batch"],
           "gradient_accumulation_steps": s["grad_accum"], "learning_rate": s["lr"], "num_train_epochs": s["epochs"],
           "lr_scheduler_type": s["scheduler"], "warmup_steps": s["warmup"], "seed": s["seed"], "report_to": "none"}
    if matched:  # what ModelForge's defaults do on this CPU (see the module docstring); transformers
        # refuses bf16 without a GPU unless use_cpu is set (ModelForge sets it on a CPU too)
        cfg.update(bf16=True, train_sampling_strategy="group_by_length", use_cpu=True,
                   # LLaMA-Factory turns gradient checkpointing on by default (on the model, not through
                   # the trainer's argument), ModelForge off: memory for speed, not the batching compared
                   disable_gradient_checkpointing=True)
    return cfg


def run_job(kind: str, s: dict, model_dir: Path, data: Path, folder: Path, timeout: float) -> dict:
    """One whole job in its own process: wall time, the clock's counts, and what it wrote."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    clock, out = folder / "clock.json", folder / "out"
    env = child_env(MF_JOB_CLOCK=str(clock), MODELFORGE_HOME=str(folder / "home"))
    if kind == "modelforge":
        cmd = modelforge_command(s, model_dir, data, out)
        env["PYTHONPATH"] = os.pathsep.join([str(CLOCK), str(ROOT)])
    else:
        import yaml

        cfg = folder / "job.yaml"
        matched = kind.endswith("matched")
        cfg.write_text(yaml.safe_dump(peer_config(s, bf16_copy(model_dir) if matched else model_dir, data, out,
                                                  matched=matched)))
        cmd = [str(VENV / "bin" / "llamafactory-cli"), "train", str(cfg)]
        env["PYTHONPATH"] = os.pathsep.join([str(CLOCK), str(stand_ins())])
    log = folder / "log.txt"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.perf_counter() - t0
    adapters = sorted(p for p in out.rglob("adapter_model.safetensors") if "checkpoint-" not in str(p.parent))
    if proc.returncode != 0 or not clock.exists() or not adapters:
        tail = log.read_text(errors="replace").strip().splitlines()[-12:]
        raise RuntimeError(f"{kind} job exited {proc.returncode} (adapter written: {bool(adapters)}):\n"
                           + "\n".join(tail))
    c = json.loads(clock.read_text())
    steps = {int(k): v for k, v in c.pop("t_step_end").items()}
    losses = {int(k): v for k, v in c.pop("loss").items()}
    train_s = steps[max(steps)] - c["t_train_begin"]
    logged = {k: v for k, v in losses.items() if k % s["logging_steps"] == 0}
    res = {**c, "wall_s": wall, "train_s": train_s, "outside_s": wall - train_s,
           "tokens_per_s": c["real_tokens"] / train_s,
           "real_fraction": c["real_tokens"] / max(c["computed_tokens"], 1),
           # over the steps both log (ModelForge also logs step 1, LLaMA-Factory not the last step unless
           # it is a multiple of logging_steps): the mean, and the last such step's loss
           "mean_loss": _mean(v for k, v in logged.items()), "final_loss": logged[max(logged)] if logged else None,
           "losses": losses, "checkpoints": len(list(out.rglob("checkpoint-*")))}
    if kind == "modelforge":  # its own words for what auto chose
        events = next(out.rglob("events.jsonl")).read_text().splitlines()
        msgs = [json.loads(e)["data"].get("message", "") for e in events if '"log"' in e]
        res["said"] = [m for m in msgs if m.startswith(("training on", "torch.compile"))]
    shutil.rmtree(out, ignore_errors=True)  # adapters and checkpoints: checked, not kept
    return res


def _same(a, b) -> bool:
    """Equal settings, 1 and 1.0 alike."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def rounds(reps: int) -> list[list[str]]:
    """The jobs' order per round: A B C, C B A, A B C, ... (a drift in load hits all alike)."""
    return [list(JOBS) if r % 2 == 0 else list(reversed(JOBS)) for r in range(reps)]


# -- the parent ---------------------------------------------------------------------------------------------
def skipped(mode: str) -> dict:
    return {"name": "peer_llamafactory", "title": "Peer: ModelForge vs LLaMA-Factory, the same job", "skipped": SKIPPED,
            "figures": [figure(n, "skipped", target="report the ratio", note=SKIPPED) for n in WALL.values()],
            "notes": [SKIPPED]}


def run(mode: str, work: Path) -> dict:
    if mode == "smoke":
        return skipped(mode)
    size = SIZES[mode]
    install = ensure_peer()
    work = Path(work) / "peer"
    model_dir = build_model(Path(work).parent / "models" / "llama-29m")
    s = job_settings()
    data = write_data(work / "data", size["rows"])
    runs: dict[str, list[dict]] = {k: [] for k in JOBS}
    for r, order in enumerate(rounds(size["reps"])):
        for kind in order:
            print(f"      round {r + 1}/{size['reps']}: {kind}", file=sys.stderr, flush=True)
            folder = work / "jobs" / kind.replace(" ", "-")
            runs[kind].append(run_job(kind, s, model_dir, data, folder, size["timeout"]))
    return summarise(runs, install, s, size, model_dir)


def _ratio(runs, a: str, b: str, key: str) -> float:
    return median(x[key] / y[key] for x, y in zip(runs[a], runs[b]))


def summarise(runs: dict, install: dict, s: dict, size: dict, model_dir: Path) -> dict:
    mf, d, m = "modelforge", "llamafactory defaults", "llamafactory matched"
    med = {k: {key: median(x[key] for x in v) for key in ("wall_s", "train_s", "outside_s", "tokens_per_s",
                                                          "real_fraction", "mean_loss", "final_loss")}
           for k, v in runs.items()}
    first = {k: v[0] for k, v in runs.items()}
    check = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
             "num_train_epochs", "warmup_steps", "weight_decay", "seed", "optim", "gradient_checkpointing", "bf16",
             "train_sampling_strategy", "torch_compile")

    def differ(kind: str) -> list[str]:
        a, b = first[mf]["args"], first[kind]["args"]
        out = [f"{k} {a.get(k)} vs {b.get(k)}" for k in check if not _same(a.get(k), b.get(k))]
        out += [f"{k} {first[mf].get(k)} vs {first[kind].get(k)}" for k in ("weights_dtype", "adapter_dtype",
                "model_gradient_checkpointing", "attention", "trainable_params", "total_steps", "sequences",
                "real_tokens", "torch_threads", "nice")
                if first[mf].get(k) != first[kind].get(k)]
        return out

    same_job = [k for k in ("trainable_params", "total_steps", "sequences", "real_tokens", "torch_threads")
                if len({first[x].get(k) for x in JOBS}) != 1]
    loss_gap = abs(med[mf]["mean_loss"] - med[m]["mean_loss"]) / med[m]["mean_loss"]
    versions = install.get("versions") or {}
    figures = [
        figure(WALL["defaults"], rnd(_ratio(runs, mf, d, "wall_s")), target="report the ratio",
               note=f"below 1: ModelForge's job is faster; medians {med[mf]['wall_s']:.0f} s "
               f"vs {med[d]['wall_s']:.0f} s, process start to exit, adapter written"),
        figure(WALL["matched"], rnd(_ratio(runs, mf, m, "wall_s")), target="report the ratio",
               note=f"medians {med[mf]['wall_s']:.0f} s vs {med[m]['wall_s']:.0f} s"),
        figure("training tokens/s, ModelForge / LLaMA-Factory, default settings each",
               rnd(_ratio(runs, mf, d, "tokens_per_s")), note=f"{med[mf]['tokens_per_s']:.0f} vs "
               f"{med[d]['tokens_per_s']:.0f} real tokens/s in the training loop"),
        figure("training tokens/s, ModelForge / LLaMA-Factory, matched", rnd(_ratio(runs, mf, m, "tokens_per_s")),
               note=f"{med[mf]['tokens_per_s']:.0f} vs {med[m]['tokens_per_s']:.0f} real tokens/s"),
        figure("outside the training loop (start-up, data, saving): ModelForge, LLaMA-Factory defaults, matched",
               " / ".join(f"{med[k]['outside_s']:.0f}" for k in JOBS), unit="s"),
        figure("real tokens / computed tokens: ModelForge, LLaMA-Factory defaults, matched",
               " / ".join(f"{med[k]['real_fraction']:.3f}" for k in JOBS),
               note="padding: random batches pad to their longest row; LLaMA-Factory also pads to a multiple of 8"),
        figure("mean logged train loss, ModelForge vs LLaMA-Factory matched",
               f"{med[mf]['mean_loss']:.4f} vs {med[m]['mean_loss']:.4f} ({loss_gap:.2%})",
               note=f"mean over the steps both log; defaults (fp32, random batches): {med[d]['mean_loss']:.4f}"
                    + ("" if math.isnan(med[mf]["final_loss"]) else f"; loss at the last step both log: "
                       f"{med[mf]['final_loss']:.4f} / {med[d]['final_loss']:.4f} / {med[m]['final_loss']:.4f}")),
        figure("the same job in all three (steps, examples, real tokens, LoRA parameters, threads)", not same_job,
               note=f"differ: {same_job}" if same_job else
               f"{first[mf]['total_steps']} steps, {first[mf]['sequences']} examples, {first[mf]['real_tokens']} real "
               f"tokens, {first[mf]['trainable_params']} trainable parameters, "
               f"{first[mf]['torch_threads']} torch threads"),
        figure("matched settings differ only in", "; ".join(differ(m)) or "nothing",
               note="default settings differ in: " + ("; ".join(differ(d)) or "nothing")),
    ]
    installed = (f"reused the venv installed {install.get('installed_at', '?')} in {install.get('install_s', '?')} s"
                 if install.get("reused") else f"installed in {install['install_s']:.0f} s this run")
    notes = [
        f"LLaMA-Factory {versions.get('llamafactory')} in {VENV.relative_to(ROOT)} ({installed}; ~{PEER_GB} GB) with "
        f"torch {versions.get('torch')}, transformers {versions.get('transformers')}, trl {versions.get('trl')}, peft "
        f"{versions.get('peft')}, accelerate {versions.get('accelerate')}, datasets {versions.get('datasets')}: "
        "its own "
        "pins, not ModelForge's (transformers 5.17, trl 1.14), torch constrained to ours so pip takes the CPU wheel. "
        "torchvision and torchaudio are removed there (PyPI's builds do not load against the CPU torch); an importable "
        "torchaudio stand-in is put on its PYTHONPATH because LLaMA-Factory imports it at start.",
        "Template: LLaMA-Factory's `chatml`. ModelForge renders alpaca rows with the model's chat template, here "
        "ChatML (also what it uses for a model with none): the same text, so both count the same real tokens. "
        "LLaMA-Factory's chatml also trains the newline after each answer's <|im_end|> (ModelForge's template marks it "
        f"context): {first[m]['supervised_tokens']} supervised tokens vs {first[mf]['supervised_tokens']}.",
        "Defaults: with no bf16/fp16 flag LLaMA-Factory infers the compute dtype from GPU/NPU support only, so on a "
        "CPU it trains without autocast, its weights in the checkpoint's dtype (fp32 here; a bf16 hub checkpoint "
        "would give bf16 weights, unlike here), logging 'We recommend enable mixed precision training'; it packs "
        "only when asked, batches at random, pads each batch to a multiple of 8 tokens and checkpoints activations "
        "(gradient checkpointing, on the model). ModelForge: " + "; ".join(first[mf].get("said", [])) + ".",
        "Both save a checkpoint at the last step (transformers' end-of-training save with a steps save strategy) "
        "and the adapter; neither evaluates (ModelForge: validation_split 0, which also turns off its after-training "
        "comparison; its default holds out 5% once the data has 200 rows).",
        "Loss: both average the token loss of a batch (ModelForge through trl's chunked loss, LLaMA-Factory through "
        "transformers'); the batches differ (ModelForge shuffles rows by seed before length grouping, LLaMA-Factory "
        "samples from the file's order) and so do the adapters' random starts, so the losses agree to noise, not to "
        "the digit.",
        "Noise: training-loop seconds per round: " + "; ".join(
            f"{k} " + ", ".join(f"{x['train_s']:.0f}" for x in runs[k]) for k in JOBS)
        + f" ({size['reps']} rounds). On a busy machine a ratio moves by as much as these spreads: rerun with "
          "--full (999 rows, 5 rounds) on a quiet one before relying on a difference of a few tens of per cent.",
    ]
    table = [{"round": i + 1, "job": k, "whole job s": rnd(x["wall_s"], 1), "training loop s": rnd(x["train_s"], 1),
              "real tokens/s": rnd(x["tokens_per_s"], 1), "real / computed": rnd(x["real_fraction"]),
              "weights / adapters": f"{x.get('weights_dtype')} / {x.get('adapter_dtype')}",
              "autocast": x["args"].get("bf16"), "batches": x["args"].get("train_sampling_strategy"),
              "mean loss": rnd(x["mean_loss"], 4)}
             for i in range(len(runs[mf])) for k in JOBS for x in [runs[k][i]]]
    return {"name": "peer_llamafactory", "title": "Peer: ModelForge vs LLaMA-Factory, the same job",
            "setup": {"model": f"{model_dir.name} ({n_params(model_dir) / 1e6:.1f}M parameters)",
                      "data": f"first {size['rows']} rows of alpaca_en_demo.json, 1 epoch", "batch": s["batch"],
                      "max_length (cutoff_len)": s["max_length"],
                      "LoRA": f"r{s['lora_r']}, alpha {s['lora_alpha']}, dropout {s['lora_dropout']}, all linear",
                      "learning rate": f"{s['lr']} {s['scheduler']}", "seed": s["seed"], "rounds": size["reps"],
                      "peer": f"llamafactory {versions.get('llamafactory')}"},
            "figures": figures, "table": table, "notes": notes, "install": install, "raw": runs,
            "plot": {"kind": "bars", "title": "Training tokens/s per round (real tokens)",
                     "series": {k: [x["tokens_per_s"] for x in runs[k]] for k in JOBS}}}
