"""Whether a run trains with ``torch.compile``: ``compile: auto|on|off`` decided in one place.

Compiling makes every step faster but the first one much slower (inductor traces the model and
builds C++ kernels; with length grouping, batches of a new length compile once more before the
shapes are made dynamic). ``auto`` compiles only when the run is long enough that the time won on
its steps pays the compile time back with a margin; ``on`` compiles unless it cannot (then it
says why and trains eager); ``off`` never compiles. A compile that fails when the first step
runs (inductor's C++ compiler broken, say) is caught by the engine, which trains eager instead
and says why (:func:`compile_failure`). Measured in benchmarks/cpu_speed.py
(docs/benchmarks.md, "CPU training speed"); the figures are the constants below.

No torch import here: the decision is arithmetic on the config, the device and the run's size,
so the engine and the tests share it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

# Measured in benchmarks/cpu_speed.py (docs/benchmarks.md, "CPU training speed"), 29M Llama, LoRA r16
# all-linear, batch 4 x <=256 tokens, 2 threads: torch.compile cost 124 s (fp32) and 144 s (bf16)
# more than eager over the first steps on a heavily loaded machine (the first step plus one
# recompile when length grouping brings a second batch length and the shapes turn dynamic; ~50 s
# for the first step on a quiet AMX machine, the figure), and was won back after 76-95
# steps; compiled bf16 steps then took ~0.6x of eager bf16's (1.9x fp32 eager). Compile time grows
# with the layers traced, so it is counted per layer above a fixed part (29M, 4 layers: ~100 s).
COMPILE_FIXED_S = 40.0
COMPILE_PER_LAYER_S = 15.0
STEP_TIME_SAVED = 0.33  # fraction of an eager step that compiling removes once compiled
PAYBACK_MARGIN = 2.0  # compile only when the steps win back twice the compile time: estimates are rough

# LoRA training speed on a CPU, in tokens/s x parameters per core (bf16 weights on a CPU with bf16
# matrix units: 29M Llama ~1,430 tokens/s on 2 quiet AMX cores; fp32 716 (core.memory)).
CPU_TOKENS_PARAMS_PER_CORE_BF16 = 1430 * 29e6 / 2
CPU_TOKENS_PARAMS_PER_CORE_FP32 = 716 * 29e6 / 2


@dataclass
class CompilePlan:
    """What ``compile`` means for one run.

    Attributes:
        enabled: train with torch.compile.
        reason: one line for the events and the Train tab ("on: ...", "off (...)").
        compile_s: the compile time expected (0 when not compiling): shown as "compiling, ~N s".
    """

    enabled: bool
    reason: str
    compile_s: float = 0.0


def expected_compile_s(num_layers: int) -> float:
    """Seconds torch.compile is expected to take on a CPU for a model with ``num_layers`` layers."""
    return COMPILE_FIXED_S + COMPILE_PER_LAYER_S * max(1, num_layers)


def cannot_compile(config, device: str) -> str:
    """Why this run cannot use torch.compile here ("" when it can)."""
    # Several processes (DDP) compile too: each compiles its own copy (the same compile time, paid
    # at once), and two compiled CPU processes trained the exact loss and gradient-norm curve of
    # one eager process (tests/test_speed.py). FSDP/DeepSpeed are GPU-only and not measured.
    if getattr(config, "num_processes", 1) > 1 and getattr(config, "distributed", "ddp") != "ddp":
        return f"{config.distributed}: torch.compile with sharded training is not tested here (DDP is)"
    if device == "mps":
        return "Apple MPS: torch.compile's MPS back-end is not reliable for training yet"
    if getattr(config, "quantization", "none") != "none":
        return "a quantised (4/8-bit) base: bitsandbytes' kernels break the compiled graph"
    if getattr(config, "provider", "huggingface") != "huggingface":
        return f"provider '{config.provider}' patches the model itself"
    if device == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "no C++ compiler (g++) on this machine: inductor builds its CPU kernels with one"
    return ""


def compile_plan(config, *, device: str, params: int, num_layers: int, train_tokens: float,
                 threads: int, dtype: str) -> CompilePlan:
    """Decide ``compile`` for a run.

    Args:
        config: the RunConfig (``compile``, ``num_processes``, ``quantization``, ``provider``).
        device: "cpu", "cuda" or "mps".
        params: the model's parameter count.
        num_layers: its decoder layers (compile time grows with them).
        train_tokens: tokens the run will train on (an estimate: rows x epochs x their length).
        threads: torch threads the run uses (CPU speed scales with them).
        dtype: what it trains in ("bf16", "fp16", "fp32").
    """
    mode = getattr(config, "compile", "auto")
    if mode == "off":
        return CompilePlan(False, "off (compile: off)")
    why_not = cannot_compile(config, device)
    if why_not:
        return CompilePlan(False, f"off: cannot compile here ({why_not})")
    cost = expected_compile_s(num_layers)
    if mode == "on":
        return CompilePlan(True, f"on (compile: on), ~{cost:.0f} s of compiling first", cost)
    if device != "cpu":
        # The break-even below is measured on CPUs only; on a GPU compile time and gains differ.
        return CompilePlan(False, f"off (auto: break-even not measured on {device}; set compile: on to try)")
    per_core = CPU_TOKENS_PARAMS_PER_CORE_BF16 if dtype == "bf16" else CPU_TOKENS_PARAMS_PER_CORE_FP32
    eager_s = train_tokens * max(params, 1) / (per_core * max(threads, 1))
    won = eager_s * STEP_TIME_SAVED
    if won >= PAYBACK_MARGIN * cost:
        return CompilePlan(True, f"on (auto: ~{eager_s / 60:.0f} min of training wins back ~{cost:.0f} s of "
                                 f"compiling)", cost)
    return CompilePlan(False, f"off (auto: run too short/small to win back ~{cost:.0f} s of compiling: "
                              f"~{eager_s:.0f} s of training would save ~{won:.0f} s)")


# What torch.compile raises when it cannot compile a graph: dynamo's and inductor's exceptions (a
# broken or missing C++ compiler, a lowering it does not support). Named, not imported: no torch here.
_COMPILE_ERRORS = {"TorchDynamoException", "BackendCompilerFailed", "InductorError", "CppCompileError"}


def compile_failure(exc: BaseException) -> str:
    """One line saying why torch.compile failed, when ``exc`` (or what caused it) is a compile
    error; "" for any other exception (those are the run's own failures)."""
    seen = 0
    while exc is not None and seen < 8:
        if {c.__name__ for c in type(exc).__mro__} & _COMPILE_ERRORS:
            # The first line says what failed; torch's advice on verbose stack traces follows it.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            text = (lines[0] if lines else type(exc).__name__)[:240]
            return f"{type(exc).__name__}: {text}"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return ""
