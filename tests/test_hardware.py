"""The hardware probe: this machine, and faked NVIDIA / Apple machines via stub modules."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from core import hardware
from core.hardware import (CPUInfo, GPUInfo, HardwareReport, best_dtype, probe, summary_lines)


# -- fakes -------------------------------------------------------------------------------------------
class _FakeNVMLError(Exception):
    pass


class _FakeLibraryNotFound(_FakeNVMLError):
    pass


def fake_pynvml(gpus=(("NVIDIA GeForce RTX 4090", 24 * 1024, 22 * 1024, (8, 9)),),
                init_error: type[Exception] | None = None, cuda=12040, v2=True) -> types.ModuleType:
    """A stand-in for nvidia-ml-py with the calls the probe makes."""
    m = types.ModuleType("pynvml")
    m.NVMLError = _FakeNVMLError
    m.NVMLError_LibraryNotFound = _FakeLibraryNotFound
    m.shutdowns = 0

    def init():
        if init_error:
            raise init_error("NVML Shared Library Not Found")

    def shutdown():
        m.shutdowns += 1

    m.nvmlInit = init
    m.nvmlShutdown = shutdown
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: gpus[h][0].encode()  # old bindings return bytes
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        total=gpus[h][1] * 2**20, free=gpus[h][2] * 2**20, used=(gpus[h][1] - gpus[h][2]) * 2**20)
    m.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    m.nvmlDeviceGetCudaComputeCapability = lambda h: gpus[h][3]
    if v2:
        m.nvmlSystemGetCudaDriverVersion_v2 = lambda: cuda
    else:
        m.nvmlSystemGetCudaDriverVersion = lambda: cuda
    return m


def fake_torch(mps_available: bool, built: bool = True) -> types.ModuleType:
    t = types.ModuleType("torch")
    t.backends = types.SimpleNamespace(
        mps=types.SimpleNamespace(is_available=lambda: mps_available, is_built=lambda: built))
    return t


# -- this machine --------------------------------------------------------------------------------------
def test_probe_this_machine(tmp_path):
    report = probe(tmp_path)
    assert report.ram_total_gib > 0 and report.ram_available_gib > 0
    assert report.cpu.logical_cores >= 1 and report.cpu.physical_cores >= 1
    assert report.cpu.model and report.cpu.model != "unknown"
    assert report.python.startswith("3.")
    assert report.disk.free_gib > 0 and not report.disk.reason
    assert report.probe_seconds < 1.0
    assert report.device in ("cpu", "cuda", "mps")
    json.dumps(report.to_dict())  # serialisable as is
    if not report.gpus:
        # No GPU is a plain statement, not an error.
        assert report.gpu_reason
        assert not any("GPU" in p for p in report.problems)
        if report.device == "cpu":
            assert report.summary.startswith("No GPU found: training runs on the CPU")
            assert f"({report.cpu.physical_cores} core" in report.summary
    names = [b.name for b in report.backends]
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "flash_attn",
                 "accelerate", "datasets", "gradio"):
        assert name in names
    # A provider's own back-end line (unsloth's) is added by the plugin-aware report, with the
    # reason a refused run gives.
    from core.checks import hardware_report
    from core.registry import PROVIDERS

    unsloth = hardware_report(tmp_path).backend("unsloth")
    assert unsloth is not None and (unsloth.available, unsloth.reason) == PROVIDERS.get("unsloth").available()
    torch_info = report.backend("torch")
    assert torch_info.version and torch_info.available
    assert "build" in torch_info.reason
    lines = summary_lines(report)
    assert lines[0] == report.summary
    assert all(isinstance(line, str) for line in lines)
    assert any(line.startswith("RAM:") for line in lines)


def test_probe_imports_nothing_heavy(tmp_path):
    # A fresh interpreter: the probe must not import torch (1-2 s) or any training library.
    code = ("import sys; from core.hardware import probe; r = probe(sys.argv[1]); "
            "heavy = [m for m in ('torch', 'transformers', 'gradio', 'unsloth', 'trl', 'peft') "
            "if m in sys.modules]; print(heavy, r.probe_seconds)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True, timeout=60)
    heavy, seconds = out.stdout.strip().rsplit(" ", 1)
    if sys.platform != "darwin":
        assert heavy == "[]"
    assert float(seconds) < 1.0


def test_real_nvml_without_driver_says_so_plainly():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    except pynvml.NVMLError:
        pass
    report = probe()
    assert report.gpus == []
    assert report.gpu_reason == "no NVIDIA driver found"


# -- no pynvml -------------------------------------------------------------------------------------------
def test_pynvml_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    report = probe(tmp_path)
    assert report.gpus == []
    assert "nvidia-ml-py is not installed" in report.gpu_reason
    assert report.device != "cuda"
    assert report.ram_total_gib > 0  # the rest of the probe is unaffected


def test_nvml_library_not_found(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_error=_FakeLibraryNotFound))
    report = probe(tmp_path)
    assert report.gpus == [] and report.gpu_reason == "no NVIDIA driver found"


def test_nvml_other_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_error=_FakeNVMLError))
    report = probe(tmp_path)
    assert report.gpus == [] and "did not answer" in report.gpu_reason


# -- a faked NVIDIA GPU ------------------------------------------------------------------------------------
def test_fake_gpu(monkeypatch, tmp_path):
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    report = probe(tmp_path)
    assert report.device == "cuda"
    assert len(report.gpus) == 1
    gpu = report.gpus[0]
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    assert gpu.memory_total_mib == 24 * 1024 and gpu.memory_free_mib == 22 * 1024
    assert gpu.compute_capability == (8, 9) and gpu.bf16
    assert gpu.driver_version == "550.54.15" and gpu.cuda_driver_version == "12.4"
    assert best_dtype(report) == "bf16"
    assert "NVIDIA GeForce RTX 4090" in report.summary and "bf16" in report.summary
    assert report.gpu_reason == ""
    assert fake.shutdowns == 1  # NVML is released again
    data = json.loads(json.dumps(report.to_dict()))
    assert data["gpus"][0]["compute_capability"] == [8, 9]
    assert any(line.startswith("GPU 0:") for line in summary_lines(report))
    # unsloth / flash-attn are not judged GPU-less any more.
    from core.checks import hardware_report

    assert "installed but needs" not in report.backend("flash_attn").reason
    assert "installed but needs" not in hardware_report(tmp_path).backend("unsloth").reason


def test_fake_old_gpu_uses_fp16(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(
        gpus=(("Tesla T4", 15360, 15000, (7, 5)),), v2=False, cuda=11080))
    report = probe(tmp_path)
    assert report.device == "cuda" and not report.gpus[0].bf16
    assert report.gpus[0].cuda_driver_version == "11.8"
    assert best_dtype(report) == "fp16"


def test_fake_driver_without_gpus(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus=()))
    report = probe(tmp_path)
    assert report.device != "cuda" and "lists no usable GPU" in report.gpu_reason


# -- a faked Mac -------------------------------------------------------------------------------------------
def test_fake_mps(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setitem(sys.modules, "torch", fake_torch(True))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    report = probe(tmp_path)
    assert report.mps_available and report.device == "mps"
    assert "MPS" in report.summary
    assert best_dtype(report) == "fp16"  # what the engine trains on an Apple GPU
    assert any(line.startswith("MPS:") for line in summary_lines(report))


def test_fake_mac_without_mps(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setitem(sys.modules, "torch", fake_torch(False, built=False))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    report = probe(tmp_path)
    assert not report.mps_available and report.device == "cpu"
    assert "without MPS" in report.mps_reason


def test_linux_never_asks_torch_for_mps(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "torch", fake_torch(True))  # would say yes if asked
    report = probe(tmp_path)
    assert not report.mps_available and "only on macOS" in report.mps_reason


# -- failures inside the probe -----------------------------------------------------------------------------
def test_disk_usage_failure_is_reported_not_raised(monkeypatch, tmp_path):
    import psutil

    def boom(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(psutil, "disk_usage", boom)
    report = probe(tmp_path)
    assert report.disk.reason.startswith("could not measure free disk space")
    assert report.disk.free_gib == 0
    assert report.disk.reason in report.problems
    assert report.ram_total_gib > 0 and report.summary
    assert any(line.startswith("Disk:") and "could not" in line for line in summary_lines(report))


def test_any_failing_step_is_reported_not_raised(monkeypatch, tmp_path):
    def boom(report):
        raise RuntimeError("psutil exploded")

    monkeypatch.setattr(hardware, "_probe_ram", boom)
    report = probe(tmp_path)
    assert any("memory" in p and "psutil exploded" in p for p in report.problems)
    assert report.cpu.logical_cores >= 1 and report.summary


def test_missing_data_dir_measures_nearest_parent(tmp_path):
    report = probe(tmp_path / "not" / "there" / "yet")
    assert report.disk.free_gib > 0 and not report.disk.reason


def test_default_data_dir_is_modelforge_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELFORGE_HOME", str(tmp_path / "home"))
    report = probe()
    assert report.disk.path == str((tmp_path / "home").resolve())


# -- interpretation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("report, expected", [
    # A CPU with bf16 matrix units (AMX / AVX-512 bf16) trains bf16 weights at 2+ threads
    # (measured faster for the same loss: docs/benchmarks.md, "CPU training speed"); the ARM
    # "bf16" flag alone (bf16=True, no units) stays fp32.
    (HardwareReport(device="cpu", cpu=CPUInfo(bf16=True, bf16_units=True)), "bf16"),
    (HardwareReport(device="cpu", cpu=CPUInfo(bf16=True, bf16_units=False)), "fp32"),
    (HardwareReport(device="cpu", cpu=CPUInfo(bf16=False)), "fp32"),
    (HardwareReport(device="cuda", gpus=[GPUInfo(compute_capability=(8, 0), bf16=True)]), "bf16"),
    (HardwareReport(device="cuda", gpus=[GPUInfo(compute_capability=(7, 0), bf16=False)]), "fp16"),
    (HardwareReport(device="mps", mps_available=True), "fp16"),
])
def test_best_dtype(report, expected, monkeypatch):
    monkeypatch.setattr(hardware, "train_threads", lambda: 2)
    assert best_dtype(report) == expected


@pytest.mark.parametrize("units, threads, quant, expected, why", [
    (True, 2, "none", "bf16", "bf16 matrix units"),
    (True, 16, "none", "bf16", "bf16 matrix units"),
    (True, 1, "none", "fp32", "2+ torch threads, and this run has 1"),
    (False, 2, "none", "fp32", "no bf16 matrix units"),
    (True, 2, "4bit", "fp32", "quantised base"),
])
def test_cpu_precision_decision(units, threads, quant, expected, why):
    dtype, reason = hardware.cpu_precision_reason(units, threads, quant)
    assert dtype == expected and why in reason
    assert hardware.auto_precision("cpu", cpu_bf16=units, threads=threads, quantization=quant) == expected


def test_cpu_bf16_units_come_from_the_matrix_flags():
    assert hardware.cpu_bf16_units("flags\t: fpu avx512f avx512_bf16\n")
    assert hardware.cpu_bf16_units("flags\t: fpu amx_bf16 amx_tile\n")
    assert not hardware.cpu_bf16_units("flags\t: fpu sse avx2\n")
    assert not hardware.cpu_bf16_units("Features\t: fp asimd bf16 i8mm\n")  # ARM: not faster in torch


def test_the_report_says_what_auto_trains_on_a_bf16_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "train_threads", lambda: 2)
    report = HardwareReport(device="cpu", cpu=CPUInfo(bf16=True, bf16_units=True, physical_cores=2))
    report.summary = hardware._summary_sentence(report)
    device_line = next(line for line in summary_lines(report) if line.startswith("Device:"))
    assert "precision 'auto' -> bf16" in device_line and "faster than fp32" in device_line  # and why
    assert "in bf16" in report.summary
    monkeypatch.setattr(hardware, "train_threads", lambda: 1)
    device_line = next(line for line in summary_lines(report) if line.startswith("Device:"))
    assert "precision 'auto' -> fp32" in device_line and "this run has 1" in device_line


def test_the_hardware_tab_and_the_memory_advice_say_what_the_cli_says(monkeypatch):
    """One source for the precision advice: the Hardware tab's table, the CLI and the memory note."""
    from components.hardware_tab import hardware_markdown
    from core import memory

    monkeypatch.setattr(hardware, "train_threads", lambda: 1)
    report = HardwareReport(device="cpu", cpu=CPUInfo(bf16=True, bf16_units=True, physical_cores=1))
    advice = hardware.precision_advice(report)
    assert advice in hardware_markdown(report)
    assert advice in "\n".join(summary_lines(report))
    recs = memory.recommend(report)
    assert recs and all("1.6x" not in r.note for r in recs)
    assert any(hardware.cpu_precision_reason(True)[1] in r.note for r in recs)


@pytest.mark.parametrize("cuda, native_bf16, gpu, expected", [
    (False, False, None, "cpu-rule"),
    (True, True, GPUInfo(compute_capability=(8, 0), bf16=True), "bf16"),
    # A T4 (7.5): torch's is_bf16_supported() counts emulated bf16 unless told not to.
    (True, False, GPUInfo(compute_capability=(7, 5), bf16=False), "fp16"),
])
def test_auto_means_the_same_to_the_engine_the_report_and_the_estimate(monkeypatch, cuda, native_bf16, gpu,
                                                                       expected):
    """One decision: what the engine trains and loads in, what `modelforge hardware` and the
    Hardware tab say, and what the memory estimate assumes."""
    import torch

    from core.config import RunConfig
    from core.engine import _train_dtype
    from core.memory import train_dtype
    from core.providers.huggingface import pick_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: cuda and (native_bf16 or including_emulation))
    device = "cuda" if cuda else "cpu"
    units = hardware.cpu_bf16_units()  # this machine's answer, which the engine reads too
    report = HardwareReport(device=device, cpu=CPUInfo(bf16=True, bf16_units=units), gpus=[gpu] if gpu else [])
    if expected == "cpu-rule":  # the CPU rule on this machine, at its thread count
        expected = "bf16" if units and torch.get_num_threads() >= 2 else "fp32"
    assert pick_dtype("auto") == _train_dtype(RunConfig(), device) == expected
    assert best_dtype(report) == train_dtype(report) == expected
    assert train_dtype(report, "4bit") == ("fp32" if device == "cpu" else expected)  # bitsandbytes on a CPU
    assert f"precision 'auto' -> {expected}" in "\n".join(summary_lines(report))
    assert report.to_dict()["auto_precision"] == expected  # `modelforge hardware --json`


def test_cpu_bf16_flags():
    assert hardware._cpu_has_bf16("flags\t: fpu sse avx512f avx512_bf16\n", "x86_64")
    assert hardware._cpu_has_bf16("flags\t: fpu amx_bf16 amx_tile\n", "x86_64")
    assert not hardware._cpu_has_bf16("flags\t: fpu sse avx2\n", "x86_64")
    assert hardware._cpu_has_bf16("Features\t: fp asimd bf16 i8mm\n", "aarch64")
