#!/usr/bin/env bash
# CI for the unsloth extra: install it in its own venv, prove that it did not move the core pins,
# make it importable on a CPU, and run the unsloth provider's tests (tests/test_unsloth.py), which
# train the demo model through `modelforge train --provider unsloth` on unsloth's CPU fallback.
#
# Why a separate venv: importing unsloth patches transformers/peft/trl for the whole process, and
# its extra pulls ~1.7 GB (xformers, triton, torchao, diffusers) that the main suite does not need.
# Why torchvision is removed: unsloth depends on it, pip takes PyPI's torchvision 0.28.0 (the
# release for torch 2.13), and that build's compiled operators do not load beside the CPU build of
# torch ("operator torchvision::nms does not exist"), so `import unsloth` fails. Nothing here needs
# torchvision; unsloth then imports and says "no GPU found, training on CPU".
# Took 3.5 min on the project's 2-core machine with a warm pip cache (install 2.3 min, tests 1.2 min;
# the GPU-check dry run added since adds ~0.7 min). The venv is 3.5 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${MODELFORGE_UNSLOTH_VENV:-tmp/venv-unsloth}"   # tmp/ is git-ignored
rm -rf "$VENV"
python3.11 -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q -e '.[test,unsloth]'
pip uninstall -y -q torchvision
echo "unsloth venv ready in ${SECONDS}s ($VENV)"

# The core pins must be exactly what pyproject.toml says (unsloth's requirements once moved them).
python - <<'EOF'
import importlib.metadata as md, re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
moved = []
for dep in deps:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", dep.split("#")[0].strip())
    if m:
        have = md.version(m[1]).split("+")[0]  # torch 2.13.0+cpu is 2.13.0
        if have != m[3]:
            moved.append(f"{m[1]} {m[3]} -> {have}")
print("unsloth", md.version("unsloth"), "| core pins:", "MOVED: " + ", ".join(moved) if moved else "unchanged")
sys.exit(1 if moved else 0)
EOF

export MODELFORGE_UNSLOTH_CPU=1          # no GPU in CI: use unsloth's CPU fallback (see core/providers/unsloth.py)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
python -m pytest -n 0 tests/test_unsloth.py -rs   # last: its summary line closes the log
