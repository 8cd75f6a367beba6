"""CPU training speed: precision and torch.compile at the thread count the app uses, and utilisation.

What ``precision: auto`` and ``compile: auto`` mean on a CPU is decided from this table
(:func:`core.hardware.auto_precision`, :func:`core.speed.compile_decision`). The same plain trl
SFT + LoRA script (ModelForge's LoRA and batching defaults, alpaca_en_demo rows, seed 42) runs in
one child process per model, every variant alternated over repetitions, with torch's thread count
left as the app leaves it (all cores) unless ``--threads`` sets ``MF_BENCH_THREADS``:

- ``fp32``: fp32 weights, no autocast (what ``precision: auto`` trained on a CPU until 2026-12-04);
- ``bf16 weights``: the base loaded in bf16, LoRA adapters and AdamW state in fp32 (peft keeps
  adapters fp32 by default), no autocast;
- ``bf16 weights + autocast``: the same plus the trainer's ``bf16=True`` (torch.autocast);
- ``all bf16``: adapters (and so their AdamW state) in bf16 too;
- with ``compile``: the same under ``torch_compile=True`` (first steps compile: reported apart).

Speed = median over identical steps (same batches, same order) of fp32's step time / the
variant's; loss = the last logged training loss, relative to fp32's (same steps, same data).
Utilisation: model FLOPs per second / the peak of a plain square matmul measured in the same
child at the same thread count, in fp32 and bf16. Model FLOPs per token are counted two ways:
``6N`` (the common approximation for full training) and ``4N`` for LoRA (forward 2N + the
backward's input gradients 2N; the frozen base gets no weight gradients; adapters are <1% of N).

Child protocol: ``python -m benchmarks.cpu_speed --child SPEC_JSON`` prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import time
from pathlib import Path

from benchmarks import (alpaca_rows, alpaca_to_trl, build_model, child_main, figure, median, n_params, rnd,
                        run_child, setup_env)

# ~100M parameters: 12 layers of width 768 (GQA 12/4 heads), the 16k vocabulary.
SHAPE_100M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=4)

EAGER = {  # name: (weights, autocast, adapters in bf16, compile)
    "fp32": ("fp32", False, False, False),
    "bf16 weights": ("bf16", False, False, False),
    "bf16 weights + autocast": ("bf16", True, False, False),
    "all bf16": ("bf16", False, True, False),
}
COMPILED = {
    "compile fp32": ("fp32", False, False, True),
    "compile bf16 weights": ("bf16", False, False, True),
}
SIZES = {
    "smoke": dict(models=("demo",), reps=1, warmup=2, steps=3, compile_models=(), batch=2, max_length=128),
    "quick": dict(models=("demo", "29m", "100m"), reps=1, warmup=3, steps=10, compile_models=("29m",), batch=4,
                  max_length=256),
    "full": dict(models=("demo", "29m", "100m"), reps=2, warmup=4, steps=20, compile_models=("demo", "29m", "100m"),
                 batch=4, max_length=256),
}


class StepClock:
    """A TrainerCallback (duck-typed) stamping each step's end, trl's token counter and the loss."""

    def __init__(self):
        self.t: dict[int, float] = {}
        self.tokens: dict[int, float] = {}
        self.loss: dict[int, float] = {}
        self.start = 0.0

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.t[state.global_step] = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "num_tokens" in logs:
            self.tokens[state.global_step] = float(logs["num_tokens"])
        if "loss" in logs:
            self.loss[state.global_step] = float(logs["loss"])


def matmul_peak(dtype_name: str, n: int = 2048, seconds: float = 1.5) -> float:
    """GFLOP/s of an n x n matmul in this process at its thread count (best of a few rounds)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def train_once(spec: dict, out: Path, weights: str, autocast: bool, bf16_adapters: bool, compiled: bool) -> StepClock:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import trainer as trainer_module
    from trl import SFTConfig, SFTTrainer

    from core.config import RunConfig
    from core.strategies.sft import batching

    c = RunConfig()
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=torch.bfloat16 if weights == "bf16" else torch.float32)
    lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM", bias="none")
    model = get_peft_model(model, lora, autocast_adapter_dtype=not bf16_adapters)
    rows = alpaca_rows(spec["samples"])
    order = list(range(len(rows)))
    random.Random(42).shuffle(order)
    ds = Dataset.from_list([alpaca_to_trl(rows[i]) for i in order])
    args = SFTConfig(output_dir=str(out), max_steps=spec["max_steps"], per_device_train_batch_size=spec["batch"],
                     learning_rate=2e-4, lr_scheduler_type="linear", logging_steps=1, save_steps=10_000, seed=42,
                     data_seed=42, report_to=[], disable_tqdm=True, use_cpu=True, bf16=autocast,
                     max_length=spec["max_length"], completion_only_loss=True, gradient_checkpointing=False,
                     torch_compile=compiled, **batching(c))
    clock = StepClock()
    trainer_module.DEFAULT_CALLBACKS.append(clock)
    try:
        SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train()
    finally:
        trainer_module.DEFAULT_CALLBACKS.remove(clock)
        if compiled:
            torch._dynamo.reset()
        gc.collect()
    return clock


def child(spec: dict) -> dict:
    setup_env()
    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    os.environ["MODELFORGE_HOME"] = str(Path(spec["work"]) / "home")
    variants = dict(EAGER, **(COMPILED if spec["compile"] else {}))
    out: dict[str, list] = {k: [] for k in variants}
    peaks = {d: matmul_peak(d) for d in ("fp32", "bf16")}
    for rep in range(spec["reps"]):
        names = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in names:
            clock = train_once(spec, Path(spec["work"]) / f"{rep}-{name.replace(' ', '_')}", *variants[name])
            w, last = spec["warmup"], spec["max_steps"]
            out[name].append({
                "step_s": [clock.t[i] - clock.t[i - 1] for i in range(w + 1, last + 1)],
                "tokens": clock.tokens[last] - clock.tokens[w], "window_s": clock.t[last] - clock.t[w],
                "first_step_s": clock.t[1] - clock.start, "warmup_s": clock.t[w] - clock.start,
                "final_loss": clock.loss.get(last)})
    peaks_after = {d: matmul_peak(d) for d in ("fp32", "bf16")}
    return {"results": out, "threads": torch.get_num_threads(),
            "peak_gflops": {d: max(peaks[d], peaks_after[d]) for d in peaks}}


# -- the parent ----------------------------------------------------------------------------------------
def _model(kind: str, work: Path) -> Path:
    if kind == "demo":
        setup_env()
        os.environ.setdefault("MODELFORGE_HOME", str(work / "home"))
        from core.demo_model import demo_path

        return demo_path()
    if kind == "100m":
        return build_model(work.parent / "models" / "llama-100m", shape=SHAPE_100M)
    return build_model(work.parent / "models" / "llama-29m")


def _params(model_dir: Path) -> int:
    n = n_params(model_dir)
    if n:
        return n
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)  # the demo: count from its config
    h, i, L, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = h // cfg.num_attention_heads * cfg.num_key_value_heads
    return L * (2 * h * h + 2 * h * kv + 3 * h * i) + v * h * (1 if cfg.tie_word_embeddings else 2)


def run(mode: str, work: Path) -> dict:
    size = SIZES[mode]
    work = Path(work) / "cpu_speed"
    work.mkdir(parents=True, exist_ok=True)
    rows, figures, raw = [], [], {}
    for kind in size["models"]:
        model_dir = _model(kind, work)
        params = _params(model_dir)
        spec = {"work": str(work / kind), "model_dir": str(model_dir), "reps": size["reps"],
                "warmup": size["warmup"], "max_steps": size["warmup"] + size["steps"], "samples": 400,
                "batch": size["batch"], "max_length": size["max_length"], "compile": kind in size["compile_models"]}
        res = run_child(["benchmarks.cpu_speed", "--child", json.dumps(spec)], timeout=3600)
        raw[kind] = res
        base = res["results"]["fp32"]
        for name, runs in res["results"].items():
            speed = median(b / r for run_, b_run in zip(runs, base) for r, b in zip(run_["step_s"], b_run["step_s"]))
            loss = median(abs(r["final_loss"] - b["final_loss"]) / abs(b["final_loss"]) for r, b in zip(runs, base))
            tps = median(r["tokens"] / r["window_s"] for r in runs)
            peak = res["peak_gflops"]["bf16" if "bf16" in name else "fp32"]
            rows.append({"model": f"{kind} ({params / 1e6:.1f}M)", "variant": name, "tokens/s": rnd(tps, 1),
                         "vs fp32": rnd(speed), "final loss vs fp32": f"{loss:.2%}",
                         "first step s": rnd(median(r["first_step_s"] for r in runs), 1),
                         "MFU 4N (LoRA)": f"{4 * params * tps / (peak * 1e9):.1%}",
                         "MFU 6N": f"{6 * params * tps / (peak * 1e9):.1%}", "peak": "bf16" if "bf16" in name else "fp32"})
        best = max((r for r in rows if r["model"].startswith(kind) and "compile" not in r["variant"]),
                   key=lambda r: r["vs fp32"])
        figures.append(figure(f"{kind} model: fastest eager precision vs fp32", best["vs fp32"],
                              note=f"{best['variant']}, final loss vs fp32 {best['final loss vs fp32']}"))
    peaks = next(iter(raw.values()))["peak_gflops"]
    figures.append(figure("matmul peak fp32 / bf16 (GFLOP/s, 2048^2)", f"{peaks['fp32']:.0f} / {peaks['bf16']:.0f}",
                          note=f"{next(iter(raw.values()))['threads']} torch threads"))
    return {"name": "cpu_speed", "title": "CPU training speed: precision, torch.compile, utilisation",
            "setup": {"batch": size["batch"], "max_length": size["max_length"], "warmup_steps": size["warmup"],
                      "measured_steps": size["steps"], "repetitions": size["reps"]},
            "figures": figures, "table": rows, "raw": raw}


def main(argv: list[str] | None = None) -> int:
    return child_main(child, argv)


if __name__ == "__main__":
    sys.exit(main())
