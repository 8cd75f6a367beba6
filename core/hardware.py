"""What this machine can train on: CPU, RAM, disk, NVIDIA GPUs, Apple MPS and the installed back-ends.

:func:`probe` never raises: every part that cannot be read is recorded with the reason, so the
Hardware tab and ``modelforge hardware`` always have something true to show. It is cheap (well
under a second) because it does not import torch or any training library: versions come from
package metadata, the CUDA build of torch from ``torch/version.py`` read as text, NVIDIA GPUs
from NVML (``pynvml``, imported inside the function). Only on macOS is torch imported, because
MPS can only be asked through torch. One exception to "cheap": with unsloth installed beside a
usable NVIDIA GPU, the first probe tries ``import unsloth`` in a child process (10-20 s, then
cached per version set; see :func:`core.providers.unsloth.status`).

:func:`best_dtype` turns a report into the training precision that ``precision: auto`` means
(decided in one place, :func:`auto_precision`, which the engine and the memory estimate use too).
The memory estimate and the model advice built on this report live in :mod:`core.memory`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3

# Back-ends reported, with the distribution names to look up (first found wins). Optional
# back-ends are never imported here: importing torch/transformers/gradio costs seconds. A
# provider whose back-end needs a closer look than "installed?" (one that patches libraries at
# import) gives its own line: :func:`core.checks.hardware_report` asks each provider's
# ``backend_status`` and sets it here, so this module knows no provider.
BACKENDS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "peft": ("peft",),
    "trl": ("trl",),
    "bitsandbytes": ("bitsandbytes",),
    "flash_attn": ("flash_attn", "flash-attn"),
    "accelerate": ("accelerate",),
    "datasets": ("datasets",),
    "gradio": ("gradio",),
}
# Back-ends that only do anything on an NVIDIA GPU.
_GPU_ONLY = {"flash_attn"}
_INSTALL_HINT = {
    "flash_attn": "pip install flash-attn --no-build-isolation (NVIDIA GPUs only)",
}


@dataclass
class CPUInfo:
    """The processor.

    Attributes:
        model: marketing name ("Intel(R) Xeon(R) ..."), or the architecture when unknown.
        arch: machine architecture (x86_64, arm64...).
        physical_cores: physical cores (falls back to logical when unknown).
        logical_cores: hardware threads.
        bf16: the CPU has native bfloat16 instructions (AVX512-BF16, AMX or ARM BF16).
        bf16_units: it has the bf16 matrix instructions that make bf16 training faster than fp32
            (AMX / AVX-512 bf16: :func:`cpu_bf16_units`), which ``precision: auto`` uses.
    """

    model: str = "unknown"
    arch: str = ""
    physical_cores: int = 1
    logical_cores: int = 1
    bf16: bool = False
    bf16_units: bool = False


@dataclass
class DiskInfo:
    """Space on the disk that holds the data folder.

    Attributes:
        path: the folder measured.
        total_gib / free_gib: sizes in GiB (0 when unknown).
        reason: why it could not be measured ("" when it was).
    """

    path: str = ""
    total_gib: float = 0.0
    free_gib: float = 0.0
    reason: str = ""


@dataclass
class GPUInfo:
    """One NVIDIA GPU, as NVML sees it.

    Attributes:
        index: NVML index (CUDA_VISIBLE_DEVICES may renumber them for torch).
        name: product name.
        memory_total_mib / memory_free_mib: GPU memory in MiB.
        driver_version: NVIDIA driver version ("550.54.15").
        cuda_driver_version: highest CUDA version the driver supports ("12.4").
        compute_capability: (major, minor), e.g. (8, 6) for an RTX 3090.
        bf16: bfloat16 is supported (compute capability >= 8.0, Ampere or newer).
    """

    index: int = 0
    name: str = "unknown NVIDIA GPU"
    memory_total_mib: int = 0
    memory_free_mib: int = 0
    driver_version: str = ""
    cuda_driver_version: str = ""
    compute_capability: tuple[int, int] = (0, 0)
    bf16: bool = False

    @property
    def memory_free_gib(self) -> float:
        return self.memory_free_mib / 1024

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_mib / 1024


@dataclass
class BackendInfo:
    """One library ModelForge can use.

    Attributes:
        name: import name.
        version: installed version, or None when not installed.
        available: installed and usable on this machine.
        reason: why it is not available, or a note ("CPU build", "needs an NVIDIA GPU").
    """

    name: str
    version: str | None = None
    available: bool = False
    reason: str = ""


@dataclass
class HardwareReport:
    """Everything :func:`probe` found. All fields have defaults so tests can build fakes.

    Attributes:
        os: operating system and release ("Linux 6.8.0").
        platform: ``platform.platform()``.
        python: Python version.
        cpu: the processor.
        ram_total_gib / ram_available_gib: system memory in GiB (0 when unknown).
        disk: space where the data folder lives.
        gpus: NVIDIA GPUs found (empty when none).
        gpu_reason: why no NVIDIA GPU is listed ("" when some are).
        mps_available: Apple-silicon GPU usable through torch's MPS back-end.
        mps_reason: why MPS is not available ("" when it is).
        backends: installed libraries with versions, or why they are missing.
        device: where training runs: "cuda", "mps" or "cpu".
        summary: one plain sentence saying what that means.
        problems: parts of the probe that failed (the rest of the report is still valid).
        probe_seconds: how long the probe took.
    """

    os: str = ""
    platform: str = ""
    python: str = ""
    cpu: CPUInfo = field(default_factory=CPUInfo)
    ram_total_gib: float = 0.0
    ram_available_gib: float = 0.0
    disk: DiskInfo = field(default_factory=DiskInfo)
    gpus: list[GPUInfo] = field(default_factory=list)
    gpu_reason: str = ""
    mps_available: bool = False
    mps_reason: str = ""
    backends: list[BackendInfo] = field(default_factory=list)
    device: str = "cpu"
    summary: str = ""
    problems: list[str] = field(default_factory=list)
    probe_seconds: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (tuples become lists), with ``auto_precision``: what
        ``precision: auto`` trains in here (:func:`best_dtype`)."""
        data = dataclasses.asdict(self)
        for gpu in data["gpus"]:
            gpu["compute_capability"] = list(gpu["compute_capability"])
        data["auto_precision"] = best_dtype(self)
        return data

    def backend(self, name: str) -> BackendInfo | None:
        """The entry for back-end ``name``, or None if it was not probed."""
        return next((b for b in self.backends if b.name == name), None)


# -- the probe ---------------------------------------------------------------------------------
def probe(data_dir: str | Path | None = None) -> HardwareReport:
    """Look at this machine. Never raises: failures become ``problems`` and reasons.

    Args:
        data_dir: folder whose disk is measured; default ``core.paths.home()``.

    Returns:
        A :class:`HardwareReport` with ``device`` and a plain ``summary`` filled in.
    """
    start = time.perf_counter()
    report = HardwareReport()
    steps = (
        ("operating system", _probe_os),
        ("CPU", _probe_cpu),
        ("memory", _probe_ram),
        ("disk", lambda r: _probe_disk(r, data_dir)),
        ("NVIDIA GPUs", probe_nvidia),
        ("Apple MPS", _probe_mps),
        ("installed back-ends", _probe_backends),
    )
    for what, step in steps:
        try:
            step(report)
        except Exception as exc:  # noqa: BLE001 - the probe must never take the app down
            report.problems.append(f"could not read the {what}: {type(exc).__name__}: {exc}")
    report.device = "cuda" if report.gpus else "mps" if report.mps_available else "cpu"
    report.summary = _summary_sentence(report)
    report.probe_seconds = round(time.perf_counter() - start, 4)
    return report


def _probe_os(report: HardwareReport) -> None:
    report.os = f"{platform.system()} {platform.release()}".strip()
    report.platform = platform.platform()
    report.python = platform.python_version()


def _read_cpuinfo() -> str:
    # Linux only; elsewhere there is no such file and the fallbacks below apply.
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _probe_cpu(report: HardwareReport) -> None:
    import psutil

    cpu = report.cpu
    cpu.arch = platform.machine()
    text = _read_cpuinfo()
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    if name:
        cpu.model = name.group(1).strip()
    elif sys.platform == "darwin":
        cpu.model = _mac_cpu_name() or platform.processor() or cpu.arch or "unknown"
    else:
        cpu.model = platform.processor() or cpu.arch or "unknown"
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical  # None on some VMs
    cpu.logical_cores, cpu.physical_cores = int(logical), int(physical)
    cpu.bf16 = _cpu_has_bf16(text, cpu.arch)
    cpu.bf16_units = cpu_bf16_units(text)


def _mac_cpu_name() -> str:
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                             text=True, timeout=2, check=False)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_has_bf16(cpuinfo: str, arch: str) -> bool:
    # x86 lists "flags", ARM Linux lists "Features"; either names the bf16 instructions.
    flags: set[str] = set()
    for m in re.finditer(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.MULTILINE):
        flags.update(m.group(1).split())
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    # No cpuinfo (Windows, macOS): ask torch only if something already imported it, because
    # importing it just for this costs 1-2 s. Apple M2 and newer have ARM BF16, but torch's
    # CPU bf16 kernels there are not faster than fp32, so "unknown" stays False.
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:  # noqa: BLE001 - private API, may move
            return False
    return False


def _probe_ram(report: HardwareReport) -> None:
    import psutil

    vm = psutil.virtual_memory()
    report.ram_total_gib = round(vm.total / GIB, 2)
    report.ram_available_gib = round(vm.available / GIB, 2)


def _probe_disk(report: HardwareReport, data_dir: str | Path | None) -> None:
    import psutil

    try:
        if data_dir is None:
            from core.paths import home

            data_dir = home()
        path = Path(data_dir).expanduser()
        # The folder may not exist yet (first run): measure the nearest existing parent.
        probe_at = path
        while not probe_at.exists() and probe_at.parent != probe_at:
            probe_at = probe_at.parent
        report.disk.path = str(path)
        usage = psutil.disk_usage(str(probe_at))
        report.disk.total_gib = round(usage.total / GIB, 2)
        report.disk.free_gib = round(usage.free / GIB, 2)
    except Exception as exc:  # noqa: BLE001 - permission errors, odd mounts, bad env paths
        report.disk.reason = f"could not measure free disk space: {type(exc).__name__}: {exc}"
        report.problems.append(report.disk.reason)


def probe_nvidia(report: HardwareReport) -> None:
    try:
        import pynvml
    except ImportError:
        report.gpu_reason = ("cannot look for NVIDIA GPUs: nvidia-ml-py is not installed "
                             "(pip install nvidia-ml-py)")
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        report.gpu_reason = _nvml_reason(pynvml, exc)
        return
    try:
        driver = _text(_call(pynvml, "nvmlSystemGetDriverVersion", default=""))
        cuda = _cuda_version(pynvml)
        count = pynvml.nvmlDeviceGetCount()
        for i in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                major, minor = _call(pynvml, "nvmlDeviceGetCudaComputeCapability", handle,
                                     default=(0, 0))
                report.gpus.append(GPUInfo(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total_mib=int(mem.total // 2**20),
                    memory_free_mib=int(mem.free // 2**20),
                    driver_version=driver,
                    cuda_driver_version=cuda,
                    compute_capability=(int(major), int(minor)),
                    # bf16 tensor cores arrived with Ampere (compute capability 8.0).
                    bf16=(int(major), int(minor)) >= (8, 0),
                ))
            except pynvml.NVMLError as exc:
                report.problems.append(f"NVIDIA GPU {i} could not be read: {exc}")
        if not report.gpus:
            report.gpu_reason = ("the NVIDIA driver answered but lists no usable GPU"
                                 if count == 0 else "no NVIDIA GPU could be read")
    except pynvml.NVMLError as exc:
        report.gpu_reason = _nvml_reason(pynvml, exc)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - fakes and half-initialised NVML
            pass


def _nvml_reason(pynvml, exc: Exception) -> str:
    kinds = {
        "NVMLError_LibraryNotFound": "no NVIDIA driver found",
        "NVMLError_DriverNotLoaded": "the NVIDIA driver is installed but not loaded",
        "NVMLError_NoPermission": "no permission to talk to the NVIDIA driver",
    }
    for name, text in kinds.items():
        cls = getattr(pynvml, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return text
    return f"the NVIDIA driver did not answer ({exc})"


def _call(module, name: str, *args, default=None):
    """Call an NVML function that older drivers or bindings may lack."""
    fn = getattr(module, name, None)
    if fn is None:
        return default
    try:
        return fn(*args)
    except module.NVMLError:
        return default


def _cuda_version(pynvml) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    value = _call(pynvml, "nvmlSystemGetCudaDriverVersion_v2")
    if value is None:
        value = _call(pynvml, "nvmlSystemGetCudaDriverVersion")
    if not value:
        return ""
    value = int(value)
    return f"{value // 1000}.{(value % 1000) // 10}"


def _text(value) -> str:
    # Old pynvml returned bytes, nvidia-ml-py returns str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _probe_mps(report: HardwareReport) -> None:
    if sys.platform != "darwin":
        report.mps_reason = "Apple MPS exists only on macOS"
        return
    try:
        import torch  # lazily, and only on macOS: it costs 1-2 s
    except ImportError:
        report.mps_reason = "torch is not installed"
        return
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    if mps is None:
        report.mps_reason = "this torch build has no MPS back-end"
        return
    if mps.is_available():
        report.mps_available = True
        return
    built = getattr(mps, "is_built", lambda: True)()
    report.mps_reason = ("this torch build was made without MPS" if not built
                         else "MPS is not available (needs Apple silicon and macOS 12.3 or newer)")


def _version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _torch_cuda_build() -> str | None:
    """The CUDA version torch was built for, read from torch/version.py without importing it."""
    try:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return None
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text(encoding="utf-8")
    except (OSError, ImportError, ValueError):
        return None
    m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return m.group(1) if m else None


def _probe_backends(report: HardwareReport) -> None:
    has_gpu = bool(report.gpus)
    for name, dists in BACKENDS.items():
        info = BackendInfo(name=name, version=_version(dists))
        report.backends.append(info)
        if info.version is None:
            info.reason = "not installed"
            if name in _INSTALL_HINT:
                info.reason += f"; {_INSTALL_HINT[name]}"
            continue
        info.available = True
        if name in _GPU_ONLY and not has_gpu:
            info.available = False
            info.reason = "installed but needs an NVIDIA GPU"
        elif name == "torch":
            cuda = _torch_cuda_build()
            if cuda:
                info.reason = f"CUDA {cuda} build"
            else:
                info.reason = "CPU-only build" + (
                    ": cannot use the NVIDIA GPU; install the CUDA build of torch" if has_gpu else "")
        elif name == "bitsandbytes" and not has_gpu:
            info.reason = "4-bit/8-bit loading works on the CPU, but slowly"


# -- interpretation --------------------------------------------------------------------------
def _summary_sentence(report: HardwareReport) -> str:
    if report.device == "cuda":
        gpu = max(report.gpus, key=lambda g: g.memory_free_mib)
        more = f" (and {len(report.gpus) - 1} more)" if len(report.gpus) > 1 else ""
        return (f"NVIDIA GPU found: {gpu.name}{more} with {gpu.memory_free_gib:.1f} GiB free: "
                f"training runs on the GPU in {best_dtype(report)}; 4-bit QLoRA is available.")
    if report.device == "mps":
        return (f"Apple GPU (MPS) found: training runs on it using the shared "
                f"{report.ram_total_gib:.0f} GiB of memory; slower than an NVIDIA GPU, and 4-bit "
                "QLoRA is not available.")
    cores = report.cpu.physical_cores
    return (f"No GPU found: training runs on the CPU ({cores} core{'s' if cores != 1 else ''}) in "
            f"{best_dtype(report)}; practical for the demo and models up to ~0.5B parameters with LoRA.")


# CPUs whose bf16 matrix instructions make bf16 training faster than fp32: x86 AMX or AVX-512
# bf16 (oneDNN uses them for bf16 matmuls). ARM's "bf16" flag is left out: torch's ARM CPU kernels
# were not faster in bf16 than in fp32 (Apple M2 and newer, Graviton 3), so those stay fp32.
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
# Measured in benchmarks/cpu_speed.py (docs/benchmarks.md, "CPU training speed"): LoRA r16 on all
# linear layers, batch 4 x <=256 alpaca tokens, AdamW, variants interleaved step by step, 2 threads.
# - AMD EPYC with AVX-512 bf16 (no AMX), 2026-12-04, a heavily loaded machine (medians of per-step
#   ratios): bf16 weights under autocast, fp32 adapters, 1.21x fp32 on a 29M Llama and 2.04x on a
#   ~100M one; the 0.9M demo 1.04x (Python overhead, not matmuls). Loss within 0.01% of fp32's.
#   Without autocast (bf16 base, fp32 LoRA path) it was slower: 1.13x and 1.47x.
# - The same machine quiet (load 0.4, 2026-12-04 23:05): 2.03x on the 29M model, 2.37x on ~100M, 1.09x
#   on the demo; without autocast 1.79x / 2.05x. The loaded run's figures are a lower bound.
# - Intel Xeon with AMX (the measurement, 2026-12-01): bf16 weights 1.47x on the 29M model.
# - With one torch thread bf16 autocast lost (0.6x), so bf16 needs 2+ threads.
# Not chosen: bf16 adapters too ("all bf16", 2.1x on both models above): AdamW's updates
# (~lr = 2e-4) are about half a bf16 ulp of typical LoRA A weights (~0.04), so late updates of a
# decaying schedule round away; without an fp32 master copy that is not the same training.
CPU_BF16_MIN_THREADS = 2
CPU_BF16_SPEEDUP = "~2x"  # the quiet machine's figures above (29M-100M: 2.03-2.37x), as the advice states them


def cpu_bf16_units(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 matrix instructions that torch's CPU kernels use (AMX or AVX-512
    bf16), read from /proc/cpuinfo (False where there is none: Windows, macOS)."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for m in re.finditer(r"^flags\s*:\s*(.*)$", text, re.MULTILINE):
        flags.update(m.group(1).split())
    return bool(flags & _CPU_BF16_FLAGS)


def train_threads() -> int:
    """Torch intra-op threads a run in this process uses: torch's own count when torch is already
    imported (it honours OMP_NUM_THREADS and torch.set_num_threads), else what torch will pick
    (OMP_NUM_THREADS, or the physical cores)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return int(torch.get_num_threads())
        except Exception:  # noqa: BLE001 - a half-imported torch
            pass
    raw = os.environ.get("OMP_NUM_THREADS", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except Exception:  # noqa: BLE001
        return os.cpu_count() or 1


def auto_precision(device: str, gpu_bf16: bool = False, *, cpu_bf16: bool | None = None,
                   threads: int | None = None, quantization: str = "none") -> str:
    """What ``precision: auto`` trains in: the one decision, for every caller.

    The engine and the providers (through :func:`core.models.pick_dtype`, which
    asks torch for the device), the memory estimate (:func:`core.memory.train_dtype`) and the
    hardware report (:func:`best_dtype`, shown by ``modelforge hardware`` and the Hardware tab)
    all resolve "auto" here, so what is reported is what trains.

    - "cuda" whose GPU has native bf16 (compute capability 8.0+, Ampere or newer) -> "bf16": the
      range of fp32, no loss scaling (measured on an H200: docs/benchmarks.md, "GPU check").
    - other "cuda" -> "fp16" (bf16 there is only emulated, and slow).
    - "mps" -> "fp16", as the engine has always trained on Apple GPUs.
    - "cpu" with bf16 matrix units (AMX / AVX-512 bf16, :func:`cpu_bf16_units`) and 2 or more
      torch threads -> "bf16": the base weights load in bf16 and the trainer autocasts to bf16,
      while the LoRA adapters and their AdamW state stay fp32. Measured faster than fp32 for the
      same loss (see CPU_BF16_MIN_THREADS above for the figures).
    - other "cpu" -> "fp32", and a quantised base on a CPU too (bitsandbytes' CPU kernels
      compute in fp32).

    Args:
        device: "cuda", "mps" or "cpu".
        gpu_bf16: for "cuda", whether the GPU(s) support bf16 natively.
        cpu_bf16: for "cpu", whether it has bf16 matrix units (None: read /proc/cpuinfo).
        threads: for "cpu", torch threads the run uses (None: :func:`train_threads`).
        quantization: the run's quantization ("none", "4bit", "8bit").
    """
    if device == "cuda":
        return "bf16" if gpu_bf16 else "fp16"
    if device == "mps":
        return "fp16"
    return cpu_precision_reason(cpu_bf16, threads, quantization)[0]


def cpu_precision_reason(cpu_bf16: bool | None = None, threads: int | None = None,
                         quantization: str = "none") -> tuple[str, str]:
    """(precision, why) that ``precision: auto`` means on this CPU: the one sentence the Hardware
    tab, ``modelforge hardware``, the memory advice and the Configure help agree on."""
    units = cpu_bf16_units() if cpu_bf16 is None else cpu_bf16
    n = train_threads() if threads is None else threads
    if quantization != "none":
        return "fp32", "a quantised base computes in fp32 on a CPU (bitsandbytes' CPU kernels)"
    if not units:
        return "fp32", "this CPU has no bf16 matrix units (AMX / AVX-512 bf16), where bf16 is not faster"
    if n < CPU_BF16_MIN_THREADS:
        return "fp32", (f"bf16 pays only with {CPU_BF16_MIN_THREADS}+ torch threads, and this run has {n} "
                        "(measured: bf16 lost on one thread)")
    return "bf16", (f"this CPU has bf16 matrix units (AMX / AVX-512 bf16): bf16 weights with fp32 LoRA "
                    f"adapters trained {CPU_BF16_SPEEDUP} faster than fp32 (29M-100M models) for the same loss at "
                    f"{n} threads (measured: docs/benchmarks.md, CPU training speed)")


def best_dtype(report: HardwareReport, quantization: str = "none") -> str:
    """The training precision that ``precision: auto`` resolves to on this machine
    (:func:`auto_precision` for the report's device and GPUs).

    Args:
        report: from :func:`probe`.
        quantization: the run's quantization (a quantised base trains fp32 on a CPU).
    """
    return auto_precision(report.device, bool(report.gpus) and all(g.bf16 for g in report.gpus),
                          cpu_bf16=report.cpu.bf16_units, quantization=quantization)


def precision_advice(report: HardwareReport) -> str:
    """One line: what ``precision: auto`` trains in here and why (CLI, Hardware tab, memory advice)."""
    if report.device == "cpu":
        dtype, why = cpu_precision_reason(report.cpu.bf16_units)
        return f"precision 'auto' -> {dtype}: {why}"
    return f"precision 'auto' -> {best_dtype(report)}"


def summary_lines(report: HardwareReport) -> list[str]:
    """Human-readable lines for ``modelforge hardware``.

    Args:
        report: from :func:`probe`.
    """
    cpu = report.cpu
    lines = [
        report.summary,
        "",
        f"System:   {report.os} ({report.platform}), Python {report.python}",
        f"CPU:      {cpu.model} ({cpu.arch}), {cpu.physical_cores} physical / "
        f"{cpu.logical_cores} logical cores, bf16 {'yes' if cpu.bf16 else 'no'}",
        f"RAM:      {report.ram_available_gib:.1f} GiB available of {report.ram_total_gib:.1f} GiB",
    ]
    if report.disk.reason:
        lines.append(f"Disk:     {report.disk.reason}")
    else:
        lines.append(f"Disk:     {report.disk.free_gib:.1f} GiB free of {report.disk.total_gib:.1f} GiB "
                     f"({report.disk.path})")
    if report.gpus:
        for g in report.gpus:
            lines.append(
                f"GPU {g.index}:    {g.name}, {g.memory_free_gib:.1f} GiB free of "
                f"{g.memory_total_gib:.1f} GiB, compute {g.compute_capability[0]}.{g.compute_capability[1]}, "
                f"bf16 {'yes' if g.bf16 else 'no'}, driver {g.driver_version or '?'} "
                f"(CUDA {g.cuda_driver_version or '?'})")
    else:
        lines.append(f"GPU:      none ({report.gpu_reason or 'not found'})")
    if sys.platform == "darwin" or report.mps_available:
        lines.append(f"MPS:      {'available' if report.mps_available else report.mps_reason}")
    lines.append(f"Device:   {report.device}, {precision_advice(report)}")
    lines.append("Back-ends:")
    width = max((len(b.name) for b in report.backends), default=0)
    for b in report.backends:
        status = b.version if b.version else "-"
        note = f"  ({b.reason})" if b.reason and b.version else f"  {b.reason}"
        lines.append(f"  {b.name:<{width}}  {status}{note}")
    for p in report.problems:
        lines.append(f"Note: {p}")
    return lines
