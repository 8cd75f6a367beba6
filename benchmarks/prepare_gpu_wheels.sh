#!/usr/bin/env bash
# Prepare the wheels that benchmarks/gpu_check.py installs on a GPU machine with no network.
#
#   bash benchmarks/prepare_gpu_wheels.sh [DIR]        # default DIR: tmp/gpu-wheels (tmp/ is git-ignored)
#   WITH_BNB=1 bash benchmarks/prepare_gpu_wheels.sh tmp/gpu-wheels-bnb
#
# Run it here, where PyPI is reachable. It downloads, without their dependencies (--no-deps), the
# exact versions ModelForge pins of what such a machine may lack: trl, datasets and its two small
# helpers, peft, unsloth and what unsloth imports. The GPU machine is assumed to have Python 3.12,
# a CUDA build of torch, transformers, accelerate, huggingface_hub, safetensors, tokenizers,
# pyarrow, pandas, xxhash, sentencepiece, protobuf, triton and torchvision (the lent machines'
# image does: /work/.library/device/KINDS.md); gpu_check.py says what is still missing there.
#
# Budget: everything that travels to the GPU machine is at most 64 MiB. unsloth's wheel alone is
# ~29 MB and bitsandbytes' ~43 MB (it bundles its CUDA kernels for every CUDA version), so both do
# not fit together. This script fetches the unsloth set (~40 MB) by default, and bitsandbytes only
# with WITH_BNB=1 (then without unsloth: QLORA_ONLY). Where bitsandbytes is not already installed
# on the GPU machine, run gpu_check.py twice: once with the default set (the provider comparison;
# the QLoRA part is skipped and says why), once with `WITH_BNB=1` wheels (`--only qlora`).
# Pure-python wheels serve any Python; the few compiled ones (msgspec, hf_transfer, torchao,
# multiprocess) are fetched for CPython 3.12 on x86-64 Linux (PY=3.11 etc. to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-tmp/gpu-wheels}"
PY="${PY:-3.12}"
mkdir -p "$DIR"
rm -f "$DIR"/*.whl

# The pins: the core ones are read from pyproject.toml, so they never drift from the app's.
pin() { python3 - "$1" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]
allpins = deps["dependencies"] + [d for ds in deps.get("optional-dependencies", {}).values() for d in ds]
for d in allpins:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", d.strip())
    if m and m[1].lower().replace("_", "-") == sys.argv[1].lower().replace("_", "-"):
        print(f"{m[1]}=={m[2]}")
        break
else:
    sys.exit(f"{sys.argv[1]} is not pinned in pyproject.toml")
EOF
}

# What unsloth 2026.10.9 / unsloth_zoo import beyond the machine's image, at versions that were
# installed and tested beside the pins (tests/test_unsloth.py's venv).
EXTRA=(
    "unsloth_zoo==2026.10.9" "dill==0.4.1" "multiprocess==0.70.19" "torchao==0.18.0"
    "cut_cross_entropy==25.1.1" "tyro==1.0.17" "docstring-parser==0.18.0" "typeguard==4.6.1"
    "msgspec==0.22.0" "hf_transfer==0.1.9" "json5==0.17.3" "structlog==26.1.0" "nest-asyncio==1.6.0"
)
if [ "${WITH_BNB:-0}" = "1" ]; then
    WANT=("$(pin trl)" "$(pin datasets)" "$(pin peft)" "$(pin bitsandbytes)" "dill==0.4.1" "multiprocess==0.70.19")
else
    WANT=("$(pin trl)" "$(pin datasets)" "$(pin peft)" "$(pin unsloth)" "${EXTRA[@]}")
fi
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DIR" "${WANT[@]}"

ls -l "$DIR"/*.whl | awk '{printf "%8.1f MB  %s\n", $5 / 1e6, $9}'
total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
printf '%8.1f MB  total (%.1f MiB; the budget is 64 MiB with the repo itself)\n' "$(echo "$total / 1000000" | bc -l)" \
    "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt $((60 * 1048576)) ]; then
    echo "over budget: leave room for the working tree (git ls-files | xargs du -cb)" >&2
    exit 1
fi
