"""Engine overhead: the same SFT + LoRA run through ModelForge's engine and through a plain trl script.

Same model (a ~29M-parameter Llama with a 16k vocabulary, built from a config), same data
(alpaca_en_demo.json, same rows in the same order), same seed, batch, steps, LoRA and trl
settings. Both run in one child process, alternated (A B, B A, ...), so a noisy neighbour hurts
both alike. A timing callback added to transformers' default callbacks (so both trainers get it
the same way) stamps the end of every optimizer step; tokens are trl's own ``num_tokens``
counter (real tokens, padding excluded). Steady state = the steps after the warm-up, so
loading, data preparation and saving are left out (the whole-run wall time is reported beside
it). Both variants train on identical batches in identical order (checked: same settings, same
tokens in the window), so the ratio is the median over all measured steps of plain step time /
ModelForge step time: a burst of load from another process moves a median of per-step ratios
far less than a ratio of window means.

Second table, the CPU precision that ``precision: auto`` should mean: the plain script in
fp32, fp32 weights with bf16 autocast (what the trainer's ``bf16=True`` alone does), bf16
weights (fp32 LoRA adapters, no autocast) and bf16 weights + autocast (what ``precision: auto``
trains on a CPU with bf16 matrix units since 2026-12-04), on the demo model and the 29M model,
with the loss after the run compared to fp32's. benchmarks/cpu_speed.py measures more sizes and
torch.compile.

Child protocol: ``python -m benchmarks.engine_overhead --child SPEC_JSON`` prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import math
import random
import sys
import time
from pathlib import Path

from benchmarks import (alpaca_path, alpaca_rows, alpaca_to_trl, build_model, child_main, figure, median, n_params,
                        rnd, run_child, setup_env)

SIZES = {  # reps: A/B pairs; warmup: steps skipped; steps: measured steps after the warm-up
    "smoke": dict(reps=1, warmup=1, steps=2, samples=24, batch=2, max_length=128, model="demo",
                  precision_reps=0, precision_steps=0, log_every=1),
    "quick": dict(reps=3, warmup=5, steps=10, samples=240, batch=4, max_length=512, model="29m",
                  precision_reps=1, precision_steps=10),
    "full": dict(reps=5, warmup=5, steps=30, samples=600, batch=4, max_length=512, model="29m",
                 precision_reps=3, precision_steps=20),
}
LOG_EVERY = 5  # ModelForge's default logging_steps; warmup and steps are multiples of it


# -- the child: one process trains every variant, alternated -------------------------------------------
class StepClock:
    """A TrainerCallback (duck-typed) stamping each step's end, and trl's token counter at each log."""

    def __init__(self):
        self.t: dict[int, float] = {}
        self.tokens: dict[int, float] = {}
        self.loss: dict[int, float] = {}
        self.args: dict = {}

    def __getattr__(self, name):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_train_begin(self, args, state, control, **kw):
        # Not compared: completion_only_loss. The plain script masks the prompt with trl's
        # completion_only_loss; ModelForge hands trl input_ids + labels with its own mask (core.data.chat,
        # every assistant turn), so the flag is unset there. Both train the completion tokens only.
        keys = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
                "max_steps", "logging_steps", "seed", "bf16", "fp16", "max_length", "packing", "packing_strategy",
                "padding_free", "train_sampling_strategy", "gradient_checkpointing",
                "weight_decay", "warmup_steps")
        self.args = {k: getattr(args, k, None) for k in keys}
        self.args["lr_scheduler_type"] = str(self.args["lr_scheduler_type"])
        self.args["train_sampling_strategy"] = str(self.args["train_sampling_strategy"])

    def on_step_end(self, args, state, control, **kw):
        self.t[state.global_step] = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "num_tokens" in logs:
            self.tokens[state.global_step] = float(logs["num_tokens"])
        if "loss" in logs:
            self.loss[state.global_step] = float(logs["loss"])

    def window(self, warmup: int, last: int) -> tuple[float, float]:
        """(tokens, seconds) from the end of step ``warmup`` to the end of step ``last``."""
        return self.tokens[last] - self.tokens[warmup], self.t[last] - self.t[warmup]

    def step_times(self, warmup: int, last: int) -> list[float]:
        """Seconds of each step after the warm-up (end of step i-1 to end of step i)."""
        return [self.t[i] - self.t[i - 1] for i in range(warmup + 1, last + 1)]


def _with_clock(fn):
    from transformers import trainer as trainer_module

    clock = StepClock()
    trainer_module.DEFAULT_CALLBACKS.append(clock)
    try:
        t0 = time.perf_counter()
        extra = fn() or {}
        wall = time.perf_counter() - t0
    finally:
        trainer_module.DEFAULT_CALLBACKS.remove(clock)
        gc.collect()
    return clock, wall, extra


def _batching() -> dict:
    """ModelForge's default batching (length grouping), written into the plain script too."""
    from core.config import RunConfig
    from core.strategies.sft import batching

    return batching(RunConfig())


def _lora():
    from peft import LoraConfig

    from core.config import RunConfig

    c = RunConfig()  # ModelForge's LoRA defaults, written out as a plain script would
    return LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM", bias="none")


def plain_trl(spec: dict, out: Path, weights: str, autocast: bool) -> None:
    """What a user writes by hand: load, convert the rows, SFTConfig, SFTTrainer, train, save."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=torch.bfloat16 if weights == "bf16" else torch.float32)
    rows = alpaca_rows(spec["samples"])
    order = list(range(len(rows)))
    random.Random(spec["seed"]).shuffle(order)  # the order ModelForge's train/eval split gives (split 0)
    ds = Dataset.from_list([alpaca_to_trl(rows[i]) for i in order])
    args = SFTConfig(output_dir=str(out), max_steps=spec["max_steps"], per_device_train_batch_size=spec["batch"],
                     learning_rate=2e-4, lr_scheduler_type="linear", logging_steps=spec["log_every"], logging_first_step=True,
                     save_steps=10_000, seed=spec["seed"], data_seed=spec["seed"], report_to=[], disable_tqdm=True,
                     use_cpu=True, bf16=autocast, max_length=spec["max_length"], completion_only_loss=True,
                     gradient_checkpointing=False,  # trl's default is True; ModelForge's is False
                     **_batching())
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=_lora())
    trainer.train()
    trainer.save_model(str(out / "model"))


def modelforge(spec: dict, out: Path) -> dict:
    """The CLI's path: preflight, prepare_run, run_training (records, events, model card)."""
    from core.config import RunConfig
    from core.engine import _train_dtype, preflight, prepare_run, run_training
    from core.events import EventLog
    from core.records import RecordStore

    config = RunConfig(model=spec["model_dir"], dataset=str(alpaca_path()), validation_split=0.0,
                       max_samples=spec["samples"], max_steps=spec["max_steps"], batch_size=spec["batch"],
                       max_length=spec["max_length"], logging_steps=spec["log_every"], save_steps=10_000, seed=spec["seed"],
                       learning_rate=2e-4, precision=spec.get("precision", "auto"), output_dir=str(out),
                       name="bench-engine")
    store = RecordStore(f"sqlite:///{out / 'records.db'}")
    problems = preflight(config)
    if problems:
        raise RuntimeError(f"preflight: {[str(p) for p in problems]}")
    config, run_id, run_dir = prepare_run(config, store)
    result = run_training(config, store, EventLog(run_id), run_id, run_dir)
    if result.status != "completed":
        raise RuntimeError(f"ModelForge run {result.status}: {result.error}")
    return {"dtype": _train_dtype(config, "cpu")}


def _resolved_precision() -> tuple[str, str]:
    """(weights, trainer) precision that ModelForge's ``precision: auto`` gives on this CPU."""
    from core.config import RunConfig
    from core.engine import _train_dtype
    from core.models import pick_dtype

    return pick_dtype("auto"), _train_dtype(RunConfig(), "cpu")


def child_engine(spec: dict) -> dict:
    work = Path(spec["work"])
    weights, trainer_dtype = _resolved_precision()
    results = {"modelforge": [], "plain": []}
    for rep in range(spec["reps"]):
        order = ["modelforge", "plain"] if rep % 2 == 0 else ["plain", "modelforge"]
        for kind in order:
            out = work / f"{kind}-{rep}"
            out.mkdir(parents=True, exist_ok=True)
            if kind == "modelforge":
                clock, wall, _ = _with_clock(lambda: modelforge(spec, out))
            else:
                clock, wall, _ = _with_clock(lambda: plain_trl(spec, out, weights, trainer_dtype == "bf16"))
            tokens, secs = clock.window(spec["warmup"], spec["max_steps"])
            results[kind].append({"tokens_per_s": tokens / secs, "window_tokens": tokens, "window_s": secs,
                                  "wall_s": wall, "final_loss": clock.loss.get(spec["max_steps"]),
                                  "step_s": clock.step_times(spec["warmup"], spec["max_steps"]),
                                  "args": clock.args})
    return {"results": results, "weights": weights, "trainer_dtype": trainer_dtype}


def child_precision(spec: dict) -> dict:
    work = Path(spec["work"])
    variants = {"fp32": ("fp32", False), "fp32 weights + bf16 autocast": ("fp32", True),
                "bf16 weights": ("bf16", False), "bf16 weights + bf16 autocast": ("bf16", True)}
    out: dict[str, list] = {k: [] for k in variants}
    for rep in range(spec["reps"]):
        names = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in names:
            weights, autocast = variants[name]
            d = work / f"prec-{rep}-{weights}-{autocast}"
            clock, wall, _ = _with_clock(lambda: plain_trl(spec, d, weights, autocast))
            tokens, secs = clock.window(spec["warmup"], spec["max_steps"])
            out[name].append({"tokens_per_s": tokens / secs, "final_loss": clock.loss.get(spec["max_steps"]),
                              "step_s": clock.step_times(spec["warmup"], spec["max_steps"])})
    return {"results": out}


def _child_main(spec: dict) -> dict:
    setup_env()
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    import os

    os.environ["MODELFORGE_HOME"] = str(Path(spec["work"]) / "home")
    return child_precision(spec) if spec["what"] == "precision" else child_engine(spec)


# -- the parent ----------------------------------------------------------------------------------------
def _model(kind: str, work: Path) -> Path:
    if kind == "demo":
        setup_env()
        import os

        os.environ.setdefault("MODELFORGE_HOME", str(work / "home"))
        from core.demo_model import demo_path

        return demo_path()
    return build_model(work.parent / "models" / "llama-29m")


def _spec(size: dict, model_dir: Path, work: Path, what: str, reps: int, steps: int) -> dict:
    warmup = size["warmup"]
    return {"what": what, "work": str(work), "model_dir": str(model_dir), "reps": reps, "warmup": warmup,
            "max_steps": warmup + steps, "samples": size["samples"], "batch": size["batch"],
            "max_length": size["max_length"], "seed": 42, "log_every": size.get("log_every", LOG_EVERY)}


def run(mode: str, work: Path) -> dict:
    size = SIZES[mode]
    work = Path(work) / "engine"
    work.mkdir(parents=True, exist_ok=True)
    model_dir = _model(size["model"], work)
    spec = _spec(size, model_dir, work / "engine", "engine", size["reps"], size["steps"])
    timeout = {"smoke": 300, "quick": 1800, "full": 5400}[mode]
    res = run_child(["benchmarks.engine_overhead", "--child", json.dumps(spec)], timeout=timeout)
    mf, plain = res["results"]["modelforge"], res["results"]["plain"]
    pair_ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(mf, plain)]
    wall_ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(mf, plain)]
    # Both see the same batches in the same order: compare step i with step i (plain time / ModelForge
    # time = ModelForge's speed relative to plain), and take the median over every step of every pair,
    # which a burst of load on one side moves far less than a whole-window mean.
    step_ratios = [p / m for a, b in zip(mf, plain) for m, p in zip(a["step_s"], b["step_s"])]
    ratio = median(step_ratios)
    mismatched = sorted(k for k in mf[0]["args"] if mf[0]["args"][k] != plain[0]["args"][k])
    same_tokens = all(abs(a["window_tokens"] - b["window_tokens"]) < 1 for a, b in zip(mf, plain))
    losses = [(a["final_loss"], b["final_loss"]) for a, b in zip(mf, plain)]
    figures = [
        figure("steady-state tokens/s, ModelForge / plain trl", rnd(ratio), target=">= 0.97",
               met=ratio >= 0.97 if mode != "smoke" else None,
               note=f"median over {len(step_ratios)} identical steps (same batch, same order) of plain step time / "
                    f"ModelForge step time; whole-window ratios per pair: "
                    f"{', '.join(f'{r:.3f}' for r in pair_ratios)}"),
        figure("ModelForge tokens/s (median)", rnd(median(a["tokens_per_s"] for a in mf), 1), unit="tokens/s"),
        figure("plain trl tokens/s (median)", rnd(median(b["tokens_per_s"] for b in plain), 1), unit="tokens/s"),
        figure("whole run wall time, ModelForge / plain (median)", rnd(median(wall_ratios)),
               note="includes loading, validation, records, saving: start-up, not steady state"),
        figure("same trainer settings in both", not mismatched, note=f"differ: {mismatched}" if mismatched else
               "batch, lr, scheduler, seed, precision, max_length, packing, loss masking"),
        figure("same tokens in the measured window", same_tokens),
        figure("final logged loss, ModelForge vs plain", f"{losses[0][0]:.4f} vs {losses[0][1]:.4f}"
               if losses and None not in losses[0] else "n/a"),
    ]
    out = {"name": "engine_overhead", "title": "Engine overhead: ModelForge vs a plain trl script",
           "setup": {"model": f"{model_dir.name} ({n_params(model_dir) / 1e6:.1f}M parameters)" if n_params(model_dir)
                     else "demo", "data": alpaca_path().name, "rows": size["samples"], "batch": size["batch"],
                     "max_length": size["max_length"], "warmup_steps": size["warmup"], "measured_steps": size["steps"],
                     "pairs": size["reps"], "precision (weights, trainer)": f"{res['weights']}, {res['trainer_dtype']}",
                     "trainer settings": mf[0]["args"]},
           "figures": figures, "raw": res,
           "plot": {"kind": "bars", "title": "Steady-state tokens/s per repetition",
                    "series": {"ModelForge": [a["tokens_per_s"] for a in mf],
                               "plain trl": [b["tokens_per_s"] for b in plain]}}}
    if size["precision_reps"]:
        out["precision"] = _precision(size, work)
        out["figures"] += out["precision"]["figures"]
        rows = out["precision"]["rows"]
        fastest = {label: max((k.split(": ", 1)[1] for k in rows if k.startswith(label + ":")),
                              key=lambda n: rows[f"{label}: {n}"]["speed_vs_fp32"]) for label in ("demo", "29M")}
        auto = "fp32" if res["weights"] == "fp32" and res["trainer_dtype"] == "fp32" else \
            f"{res['weights']} weights, {res['trainer_dtype']} trainer"
        agree = all((f == "fp32") == (auto == "fp32") for f in fastest.values())
        out["figures"].append(figure("precision 'auto' on this CPU trains in", auto, target="the faster correct one",
                                     met=agree, note="fastest measured: " + "; ".join(
                                         f"{k} model {v}" for k, v in fastest.items())))
        out["table"] = [{"model and precision": k, "tokens/s vs fp32": rnd(v["speed_vs_fp32"]),
                         "final loss vs fp32": f"{v['loss_rel_diff']:.2%}", "tokens/s": rnd(v["tokens_per_s"], 1)}
                        for k, v in rows.items()]
    return out


def _precision(size: dict, work: Path) -> dict:
    """bf16 vs fp32 on this CPU for the demo model and the 29M model (plain trl, alternated)."""
    rows, figures = {}, []
    for label, kind in (("demo", "demo"), ("29M", "29m")):
        model_dir = _model(kind, work)
        spec = _spec(size, model_dir, work / f"precision-{kind}", "precision", size["precision_reps"],
                     size["precision_steps"])
        res = run_child(["benchmarks.engine_overhead", "--child", json.dumps(spec)], timeout=3600)["results"]
        base = res["fp32"]
        for name, runs in res.items():
            ratios = [bs / rs for r, b in zip(runs, base) for rs, bs in zip(r["step_s"], b["step_s"])]
            dloss = [abs(r["final_loss"] - b["final_loss"]) / max(abs(b["final_loss"]), 1e-9)
                     for r, b in zip(runs, base) if r["final_loss"] is not None and b["final_loss"] is not None]
            rows[f"{label}: {name}"] = {"speed_vs_fp32": median(ratios), "loss_rel_diff": median(dloss),
                                        "tokens_per_s": median(r["tokens_per_s"] for r in runs)}
            if name != "fp32":
                figures.append(figure(f"{label} model, {name}: tokens/s vs fp32", rnd(median(ratios)),
                                      note=f"final loss differs from fp32 by {median(dloss):.3%}"
                                      if not math.isnan(median(dloss)) else ""))
    return {"rows": rows, "figures": figures}


def main(argv: list[str] | None = None) -> int:
    return child_main(_child_main, argv)


if __name__ == "__main__":
    sys.exit(main())
