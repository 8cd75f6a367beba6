"""The GPU check: what can only be measured on an NVIDIA GPU, in a few minutes, with no network.

    python3 benchmarks/gpu_check.py --wheels tmp/gpu-wheels --out results/   # on the GPU machine
    python benchmarks/gpu_check.py --dry-run                        # here: the plumbing, on the CPU

On one randomly initialised Llama of Llama-3.2-1B's shape (1.24B parameters, built from a config:
nothing can be downloaded there) it trains a few SFT steps in a fresh process per leg, through
ModelForge's own providers (``core.providers``) and trl's SFTTrainer as ``core/strategies/sft.py``
uses it:

  - ``hf-lora``       the huggingface provider, LoRA on a bf16 base
  - ``unsloth-lora``  the unsloth provider (unsloth imported first, its LoRA), same settings
  - ``hf-qlora``      QLoRA: bitsandbytes NF4 base on CUDA, LoRA on top
  - ``unsloth-qlora`` the same through unsloth

and reports, per leg, tokens/s (timed steps after warm-up), ``torch.cuda.max_memory_allocated``
and ``max_memory_reserved``, and ``core.memory.estimate(..., device="cuda")`` with its error
against the allocated peak; then the unsloth/huggingface ratios of speed and memory.

Missing packages (the lent GPU machines have torch, transformers, accelerate, but not trl,
datasets, bitsandbytes or unsloth) are installed from ``--wheels`` (made beforehand, where PyPI is
reachable, by ``benchmarks/prepare_gpu_wheels.sh``) into a private folder (``--site``) put on the
path of every leg. A leg whose packages are missing says so and is skipped; the others still run.

At most 64 MiB travel to a lent GPU machine per call, and unsloth's wheels (~40 MiB) and
bitsandbytes' (~44 MiB) do not fit together. Where bitsandbytes is not already installed there,
install the two sets in two calls on the same warm machine into one ``--site`` inside the repo's
ignored tmp/ (kept between calls while the machine stays warm, 30 s):

    # here, once (tmp/ is git-ignored; each set travels by naming it in the call's carry):
    bash benchmarks/prepare_gpu_wheels.sh                                # tmp/gpu-wheels: trl, datasets, peft, unsloth...
    WITH_BNB=1 bash benchmarks/prepare_gpu_wheels.sh tmp/gpu-wheels-bnb  # trl, datasets, peft, bitsandbytes
    # GPU call 1, carry tmp/gpu-wheels:
    python3 benchmarks/gpu_check.py --wheels tmp/gpu-wheels --site tmp/gpu-site --install-only
    # GPU call 2 within 30 s, carry tmp/gpu-wheels-bnb (the site from call 1 is still there):
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --wheels tmp/gpu-wheels-bnb --site tmp/gpu-site --out $OUT

With one call only, the unsloth set gives the LoRA legs (and the provider comparison); the QLoRA
legs are then skipped, saying that bitsandbytes is not installed.

``--dry-run`` runs the same code on the CPU with the 1M-parameter tiny model, fp32, 2 steps: the
unsloth legs then need ``MODELFORGE_UNSLOTH_CPU=1`` and the extra installed, else they are
skipped with the provider's reason. Exit status: 0 when every leg that ran completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3
# Llama-3.2-1B's shape (config.json of meta-llama/Llama-3.2-1B), random weights.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-5)
# The demo model's shape: what --dry-run trains on the CPU.
TINY = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True, max_position_embeddings=2048)

LEGS = {
    "hf-lora": ("huggingface", "none"),
    "unsloth-lora": ("unsloth", "none"),
    "hf-qlora": ("huggingface", "4bit"),
    "unsloth-qlora": ("unsloth", "4bit"),
}
# What each leg imports beyond torch/transformers, and so needs installed.
NEEDS = {"huggingface": ["trl", "datasets", "peft"], "unsloth": ["trl", "datasets", "peft", "unsloth"]}


# -- packages ------------------------------------------------------------------------------------------
def install_wheels(wheels: Path | None, site: Path) -> list[str]:
    """Install the wheels in ``wheels`` into ``site`` (no index, no dependencies): the lines to report."""
    if wheels is None or not wheels.is_dir() or not list(wheels.glob("*.whl")):
        return [f"no wheels to install ({wheels or 'no --wheels'}): using what is installed"]
    files = sorted(str(w) for w in wheels.glob("*.whl"))
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                          "--no-cache-dir", "--upgrade", "--target", str(site), *files],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return [f"pip install from {wheels} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}"]
    return [f"installed {len(files)} wheels from {wheels} into {site}"]


def missing(modules: list[str], env: dict) -> list[str]:
    code = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    out = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, env=env, cwd=ROOT)
    return out.stdout.split()


def versions(env: dict) -> dict:
    code = ("import importlib.metadata as md, json\nout = {}\n"
            "for d in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'accelerate', 'bitsandbytes', 'unsloth',"
            " 'unsloth_zoo', 'xformers', 'triton'):\n"
            "    try: out[d] = md.version(d)\n    except md.PackageNotFoundError: out[d] = None\n"
            "print(json.dumps(out))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout) if out.returncode == 0 else {}


# -- the model ------------------------------------------------------------------------------------------
def build_model(shape: dict, folder: Path, dtype: str) -> None:
    """A random Llama of ``shape`` saved with the demo model's tokenizer (its ids fit the vocab)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.demo_model import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder)
    config = LlamaConfig(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    model.to({"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]).save_pretrained(folder, safe_serialization=True)


def write_rows(path: Path, rows: int, words: int) -> None:
    import random

    rng = random.Random(0)
    vocab = "forge iron anvil hammer tongs quench temper steel bellows coal spark blade ingot alloy".split()
    path.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words))})
                              for _ in range(rows)) + "\n")


# -- one leg, in its own process ------------------------------------------------------------------------
def leg(spec: dict) -> dict:
    """Train ``steps`` SFT steps with one provider; time the steps after ``warmup``; peak memory."""
    provider_name, quant = LEGS[spec["leg"]]
    from core.registry import PROVIDERS

    provider = PROVIDERS.require(provider_name)     # NotAvailableError: the provider's reason
    provider.prepare()                              # unsloth before transformers/trl/peft
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from core.config import RunConfig
    from core.strategies.common import lora_config

    cuda = torch.cuda.is_available()
    config = RunConfig(model=spec["model_dir"], dataset="rows.jsonl", provider=provider_name,
                       quantization=quant, precision=spec["precision"], batch_size=spec["batch_size"],
                       max_length=spec["max_length"], lora_r=16, lora_alpha=16, lora_dropout=0.0,
                       lora_target_modules="all-linear", gradient_checkpointing=spec["gradient_checkpointing"],
                       max_steps=spec["steps"], learning_rate=1e-4, seed=0)
    model, tokenizer = provider.load(config, for_training=True)
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
    timings: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - self.t)

    bf16 = spec["precision"] == "bf16"
    args = SFTConfig(output_dir=spec["work"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
                     gradient_accumulation_steps=1, learning_rate=1e-4, logging_steps=1, save_strategy="no",
                     report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0,
                     gradient_checkpointing=spec["gradient_checkpointing"], bf16=bf16 and cuda, fp16=False,
                     use_cpu=not cuda, max_length=spec["max_length"], packing=False, dataset_num_proc=None)
    peft = None if provider.applies_adapter else lora_config(config)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft, callbacks=[Timer()])
    trainer.train()
    timed = timings[spec["warmup"]:] or timings
    tokens = spec["batch_size"] * spec["max_length"]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    out = {"status": "ok", "tokens_per_s": tokens * len(timed) / sum(timed), "step_s": sum(timed) / len(timed),
           "steps": len(timings), "first_loss": losses[0] if losses else None,
           "last_loss": losses[-1] if losses else None, "trainable_params": trainable,
           "four_bit": any(type(m).__name__ == "Linear4bit" for m in trainer.model.modules())}
    if cuda:
        out["max_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        out["max_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        out["gpu"] = torch.cuda.get_device_name(0)
    else:
        import resource

        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    return out


def run_leg(name: str, spec: dict, env: dict, timeout: int) -> dict:
    result_file = Path(spec["work"]) / f"{name}.json"
    spec = {**spec, "leg": name}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--leg", json.dumps(spec), "--leg-out", str(result_file)],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        return {"status": "failed", "detail": f"did not finish in {timeout} s"}
    try:
        got = json.loads(result_file.read_text())
    except (OSError, ValueError):
        got = {"status": "failed", "detail": f"exit {proc.returncode}: {tail[:300]}"}
    got["wall_s"] = round(time.perf_counter() - start, 1)
    return got


# -- calibration of the memory estimate: what one layer and the head need, measured ----------------
CALIBRATION = [  # (layers, lora_dropout, gradient_checkpointing, seq_len)
    (2, 0.0, False, 512), (4, 0.0, False, 512), (2, 0.05, False, 512), (4, 0.05, False, 512),
    (2, 0.05, True, 512), (4, 0.05, True, 512), (2, 0.05, False, 1024), (4, 0.05, False, 1024),
]


def calibrate(spec: dict) -> dict:
    """Peak memory of one training step above the model + adapters + optimizer, per configuration.

    The model is ``spec["shape"]`` with fewer layers (built on the device, random), LoRA r=16 on all
    linear layers, bf16 weights under bf16 autocast (how trl trains), AdamW. Two layer counts per
    setting give the cost of one layer (the difference) and of everything else (embeddings, head,
    logits and loss): the two terms of :func:`core.memory.estimate`'s activations.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cuda = torch.cuda.is_available()  # the CPU (dry run) checks the plumbing; its figures mean nothing
    device = "cuda" if cuda else "cpu"
    out = []
    for layers, dropout, ckpt, seq in CALIBRATION:
        if cuda:
            torch.cuda.empty_cache()
        config = LlamaConfig(**{**spec["shape"], "num_hidden_layers": layers})
        with torch.device(device):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=dropout,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(0, config.vocab_size, (spec["batch_size"], min(seq, spec["max_length"] * 4)), device=device)

        def step():
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # the optimizer's states now exist
        base = peak = 0
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        step()
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        out.append({"layers": layers, "lora_dropout": dropout, "gradient_checkpointing": ckpt,
                    "seq_len": ids.shape[1], "batch_size": spec["batch_size"], "static_gib": base / GIB,
                    "step_gib": (peak - base) / GIB})
        del model, opt, ids
    return {"status": "ok", "points": out}


# -- ModelForge's own path: the CLI, as a user runs it ------------------------------------------------
ENGINE_LEGS = {
    # name: the flags beyond the common ones, and what it needs installed
    "engine-qlora": (["--strategy", "qlora"], ["trl", "datasets", "peft", "bitsandbytes", "sqlmodel"]),
    "engine-lora": (["--strategy", "sft"], ["trl", "datasets", "peft", "sqlmodel"]),
    "engine-unsloth": (["--strategy", "sft", "--provider", "unsloth"],
                       ["trl", "datasets", "peft", "sqlmodel", "unsloth"]),
}


def cli(args: list[str], env: dict, timeout: int) -> tuple[int, dict | None, str]:
    """Run ``python -m app.main ARGS``: exit code, its last stdout line as JSON (or None), stderr's tail."""
    try:
        proc = subprocess.run([sys.executable, "-m", "app.main", *args], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, None, f"did not finish in {timeout} s"
    lines = proc.stdout.strip().splitlines()
    try:
        last = json.loads(lines[-1]) if lines else None
    except ValueError:
        last = None
    return proc.returncode, last, " | ".join(proc.stderr.strip().splitlines()[-3:])[-600:]


def engine_leg(name: str, spec: dict, env: dict, timeout: int) -> dict:
    """``modelforge train`` on the leg's model and data, then ``generate`` with and without the adapter.

    Checks what the direct legs cannot: the engine's own choices (``precision: auto``, the qlora
    strategy's 4-bit base, the provider), that the loss falls, and that the saved adapter reloads
    through the model records (``generate --model MODEL_ID``) and answers differently from the base.
    """
    flags, _ = ENGINE_LEGS[name]
    start = time.perf_counter()
    code, out, err = cli(["train", "--model", spec["model_dir"], "--dataset", spec["data"], *flags,
                          "--max-steps", str(spec["engine_steps"]), "--batch-size", str(spec["batch_size"]),
                          "--max-length", str(spec["max_length"]), "--learning-rate", "1e-3", "--logging-steps", "1",
                          "--validation-split", "0", "--save-steps", "1000", "--name", name, "--json"], env, timeout)
    got: dict = {"exit": code, "train_wall_s": round(time.perf_counter() - start, 1)}
    if code != 0 or not out or out.get("status") != "completed":
        return {**got, "status": "failed", "detail": (out or {}).get("error") or err}
    events = [json.loads(line) for line in (Path(out["output_dir"]) / "events.jsonl").read_text().splitlines()]
    steps = [e["data"] for e in events if e["type"] == "step"]
    losses = [d["loss"] for d in steps if d.get("loss") is not None]
    speeds = [d["tokens_per_second"] for d in steps if d.get("tokens_per_second")]
    got.update(status="ok", model_id=out["model_id"], first_loss=losses[0] if losses else None,
               last_loss=losses[-1] if losses else None, loss_fell=bool(losses) and losses[-1] < losses[0],
               tokens_per_s=speeds[-1] if speeds else None,
               max_memory_mb=max((d.get("memory_mb") or 0) for d in steps) if steps else None,
               logs=[e["data"]["message"] for e in events if e["type"] == "log"][:8])
    answers = {}
    for which, extra in (("tuned", []), ("base", ["--base"])):
        code, gen, err = cli(["generate", "--model", out["model_id"], "--prompt", "forge", "--max-new-tokens", "12",
                              *extra, "--json"], env, timeout)
        answers[which] = gen.get("answer") if code == 0 and gen else f"failed (exit {code}): {err}"
    got["answers"] = answers
    got["adapter_reloads"] = not answers["tuned"].startswith("failed")
    got["tuned_differs_from_base"] = answers["tuned"] != answers["base"]
    if not got["loss_fell"] or not got["adapter_reloads"]:
        got["status"] = "failed"
        got["detail"] = "the loss did not fall" if not got["loss_fell"] else "the adapter did not reload"
    return got


# -- the check ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=ROOT / "tmp" / "gpu-wheels",
                        help="folder of wheels to install first (benchmarks/prepare_gpu_wheels.sh)")
    parser.add_argument("--site", type=Path, default=None,
                        help="folder to install the wheels into and run with (default: a temporary one)")
    parser.add_argument("--install-only", action="store_true", help="install the wheels into --site, then stop")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--only", default=",".join([*LEGS, *ENGINE_LEGS]),
                        help=f"legs to run, of: {', '.join([*LEGS, *ENGINE_LEGS, 'calibrate'])}")
    parser.add_argument("--engine-steps", type=int, default=None, help="steps per engine leg (default 30, 8 dry)")
    parser.add_argument("--dry-run", action="store_true", help="the tiny model on the CPU: checks the plumbing")
    parser.add_argument("--steps", type=int, default=None, help="steps per leg (default 12 on a GPU, 2 dry)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per leg")
    parser.add_argument("--leg", help=argparse.SUPPRESS)
    parser.add_argument("--leg-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.leg:
        try:
            spec = json.loads(args.leg)
            out = calibrate(spec) if spec["leg"] == "calibrate" else leg(spec)
        except Exception as exc:  # noqa: BLE001 - a leg that cannot run says why; the others go on
            from core.errors import NotAvailableError

            status = "skipped" if isinstance(exc, NotAvailableError) else "failed"
            out = {"status": status, "detail": f"{type(exc).__name__}: {str(exc).splitlines()[0][:400] if str(exc) else ''}"}
        Path(args.leg_out).write_text(json.dumps(out))
        return 0

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="mf-gpucheck-"))
    site = (args.site if args.site.is_absolute() else ROOT / args.site) if args.site else work / "site"
    notes = install_wheels(args.wheels, site)
    if args.install_only:
        print("\n".join(notes))
        shutil.rmtree(work, ignore_errors=True)
        return 0 if notes and notes[0].startswith("installed") else 1
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", "MODELFORGE_HOME": str(work / "home"),
           "TRL_EXPERIMENTAL_SILENCE": "1", "UNSLOTH_DISABLE_STATISTICS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import torch, json; print(json.dumps([torch.cuda.is_available(),"
                            " torch.cuda.get_device_name(0) if torch.cuda.is_available() else '']))"],
                           capture_output=True, text=True, env=env, cwd=ROOT)
    cuda, gpu_name = json.loads(probe.stdout) if probe.returncode == 0 else (False, "")
    if not cuda and not args.dry_run:
        print("no CUDA GPU visible to torch: run with --dry-run to check the plumbing on the CPU", file=sys.stderr)
        return 2
    dry = args.dry_run or not cuda
    shape = TINY if dry else LLAMA_1B
    precision = "fp32" if dry else "bf16"
    spec = {"precision": precision, "steps": args.steps or (2 if dry else 12), "warmup": 0 if dry else 3,
            "batch_size": args.batch_size or (2 if dry else 4), "max_length": args.max_length or (64 if dry else 512),
            "gradient_checkpointing": args.gradient_checkpointing, "work": str(work),
            "engine_steps": args.engine_steps or (8 if dry else 30),
            "model_dir": str(work / "model"), "data": str(work / "rows.jsonl")}
    write_rows(Path(spec["data"]), rows=spec["batch_size"] * spec["steps"] + 4, words=spec["max_length"] * 2)
    build = subprocess.run([sys.executable, __file__, "--build", json.dumps({"shape": shape, "dir": spec["model_dir"],
                            "dtype": precision})], capture_output=True, text=True, env=env, cwd=ROOT)
    if build.returncode != 0:
        print(f"could not build the model: {(build.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        return 1
    report = {"dry_run": dry, "gpu": gpu_name, "python": platform.python_version(), "versions": versions(env),
              "model": {"shape": shape, "params": None}, "settings": {k: spec[k] for k in (
                  "precision", "steps", "warmup", "batch_size", "max_length", "gradient_checkpointing")},
              "notes": notes, "legs": {}}
    from core.memory import estimate, param_count

    model_config = {"model_type": "llama", **shape}
    report["model"]["params"] = param_count(model_config)
    # What ModelForge itself sees on this machine: the GPU, and what `precision: auto` trains in.
    code, hw, err = cli(["hardware", "--json"], env, 120)
    report["hardware"] = ({"device": hw.get("device"), "auto_precision": hw.get("auto_precision"),
                           "gpus": hw.get("gpus"), "summary": hw.get("summary")} if code == 0 and hw
                          else {"error": f"exit {code}: {err}"})
    print(f"hardware: {json.dumps(report['hardware'])[:400]}", file=sys.stderr, flush=True)
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name == "calibrate":  # on the CPU (dry run) only the plumbing: its figures are zeros
            got = run_leg(name, {**spec, "shape": shape}, env, args.timeout)
            report["calibration"] = got
            save(report, args.out, start)
            print(f"calibrate      {got['status']:<8} " + json.dumps(got.get("points", got.get("detail")))[:1500],
                  file=sys.stderr, flush=True)
            continue
        if name in ENGINE_LEGS:
            lack = missing(ENGINE_LEGS[name][1], env)
            got = ({"status": "skipped", "detail": f"not installed here: {', '.join(lack)}"} if lack
                   else engine_leg(name, spec, env, args.timeout))
            report.setdefault("engine", {})[name] = got
            save(report, args.out, start)
            print(f"{name:<14} {got['status']:<8} " + (
                f"loss {got['first_loss']:.3f} -> {got['last_loss']:.3f}, {got.get('tokens_per_s') or 0:.0f} tok/s, "
                f"{got.get('max_memory_mb') or 0:.0f} MB, tuned {got['answers']['tuned']!r} / base "
                f"{got['answers']['base']!r}" if got["status"] == "ok" else str(got.get("detail", ""))[:400]),
                file=sys.stderr, flush=True)
            continue
        provider, quant = LEGS[name]
        lack = missing(NEEDS[provider] + (["bitsandbytes"] if quant == "4bit" else []), env)
        if lack:
            got = {"status": "skipped", "detail": f"not installed here: {', '.join(lack)} (see prepare_gpu_wheels.sh)"}
        else:
            got = run_leg(name, spec, env, args.timeout)
        est = estimate(model_config, quantization=quant, lora_r=16, lora_targets="all-linear",
                       batch_size=spec["batch_size"], seq_len=spec["max_length"],
                       gradient_checkpointing=spec["gradient_checkpointing"], dtype=precision,
                       device="cpu" if dry else "cuda", lora_dropout=0.0, chunked_loss=True)
        got["estimate_gib"] = est.total / GIB
        measured = got.get("peak_rss_gib" if dry else "max_allocated_gib")
        if measured:
            got["estimate_error"] = (got["estimate_gib"] - measured) / measured
        report["legs"][name] = got
        save(report, args.out, start)  # after every leg: a run cut short still leaves its results
        print(f"{name:<14} {got['status']:<8} " + (
            f"{got['tokens_per_s']:9.0f} tok/s  peak {measured:6.2f} GiB  estimate {got['estimate_gib']:6.2f} GiB"
            f" ({got.get('estimate_error', 0):+.0%})" if got["status"] == "ok" else got.get("detail", "")),
            file=sys.stderr, flush=True)
    print(save(report, args.out, start))
    shutil.rmtree(work, ignore_errors=True)
    legs = [*report["legs"].values(), *report.get("engine", {}).values()]
    return 1 if any(g["status"] == "failed" for g in legs) else 0


def save(report: dict, out: Path | None, start: float) -> str:
    """Fill in the ratios and wall time; write gpu_check.json and .md to ``out``; the Markdown."""
    report["ratios"] = ratios(report["legs"], report["dry_run"])
    report["wall_s"] = round(time.perf_counter() - start, 1)
    text = markdown(report)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
        (out / "gpu_check.md").write_text(text)
    return text


def ratios(legs: dict, dry: bool) -> dict:
    key = "peak_rss_gib" if dry else "max_allocated_gib"
    out = {}
    for kind in ("lora", "qlora"):
        hf, us = legs.get(f"hf-{kind}", {}), legs.get(f"unsloth-{kind}", {})
        if hf.get("status") == "ok" and us.get("status") == "ok":
            out[kind] = {"speed_unsloth_over_hf": us["tokens_per_s"] / hf["tokens_per_s"],
                         "memory_unsloth_over_hf": us[key] / hf[key]}
    return out


def markdown(report: dict) -> str:
    dry = report["dry_run"]
    s = report["settings"]
    peak = "peak RSS" if dry else "max allocated"
    lines = [
        f"# GPU check{' (dry run on the CPU)' if dry else ''}: {report['gpu'] or 'CPU'}",
        "",
        f"Random Llama, {report['model']['params'] / 1e6:,.0f}M parameters, {s['precision']}, batch {s['batch_size']} x "
        f"{s['max_length']} tokens, LoRA r=16 on all linear layers, {s['steps']} steps ({s['warmup']} warm-up), "
        f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}. Python {report['python']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + ".",
        "",
        f"| leg | status | tokens/s | {peak} GiB | reserved GiB | estimate GiB | error | loss first -> last | 4-bit |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, g in report["legs"].items():
        if g["status"] != "ok":
            lines.append(f"| {name} | {g['status']}: {g.get('detail', '')} | | | | {g['estimate_gib']:.2f} | | | |")
            continue
        measured = g.get("peak_rss_gib" if dry else "max_allocated_gib")
        lines.append(f"| {name} | ok | {g['tokens_per_s']:,.0f} | {measured:.2f} | {g.get('max_reserved_gib', 0):.2f} | "
                     f"{g['estimate_gib']:.2f} | {g.get('estimate_error', 0):+.0%} | "
                     f"{g['first_loss']:.3f} -> {g['last_loss']:.3f} | {'yes' if g['four_bit'] else 'no'} |")
    lines.append("")
    hw = report.get("hardware", {})
    if hw:
        lines += [f"ModelForge's hardware report: device {hw.get('device')}, `precision: auto` -> "
                  f"**{hw.get('auto_precision')}**; {hw.get('summary') or hw.get('error', '')}", ""]
    if report.get("engine"):
        lines += ["`modelforge train` on the same model and data (lr 1e-3), then `modelforge generate` with "
                  "the saved adapter and with `--base`:", "",
                  "| leg | status | loss first -> last | tokens/s | peak MB | adapter reloads | tuned answer | base answer |",
                  "|---|---|---|---:|---:|---|---|---|"]
        for name, g in report["engine"].items():
            if "first_loss" not in g or g.get("first_loss") is None:
                lines.append(f"| {name} | {g['status']}: {str(g.get('detail', ''))[:300]} | | | | | | |")
                continue
            lines.append(f"| {name} | {g['status']} | {g['first_loss']:.3f} -> {g['last_loss']:.3f} | "
                         f"{g.get('tokens_per_s') or 0:,.0f} | {g.get('max_memory_mb') or 0:,.0f} | "
                         f"{'yes' if g['adapter_reloads'] else 'no'} | {g['answers']['tuned']!r} | {g['answers']['base']!r} |")
        lines.append("")
    for kind, r in report["ratios"].items():
        lines.append(f"- {kind}: unsloth / huggingface speed **{r['speed_unsloth_over_hf']:.2f}x**, "
                     f"memory **{r['memory_unsloth_over_hf']:.2f}x**")
    if not dry:
        lines.append("- estimate error is against max allocated; the estimate also counts ~0.3 GiB of CUDA "
                     "context, which the allocator does not see")
    lines += [f"- {n}" for n in report["notes"]] + [f"- wall time {report['wall_s']:.0f} s", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--build":
        spec = json.loads(sys.argv[2])
        build_model(spec["shape"], Path(spec["dir"]), spec["dtype"])
        sys.exit(0)
    sys.exit(main())
