#!/usr/bin/env bash
# Prepare the wheels that benchmarks/gpu_check.py installs on a GPU machine with no network.
#
#   bash benchmarks/prepare_gpu_wheels.sh [DIR]        # default DIR: tmp/gpu-wheels (tmp/ is git-ignored)
#
# Run it here, where PyPI is reachable. It downloads, without their dependencies (--no-deps), the
# exact versions ModelForge pins of what such a machine may lack: trl, datasets and its two small
# helpers, peft, bitsandbytes, unsloth and what unsloth imports, and sqlmodel with its helpers (the
# engine legs run `modelforge train`, which records its runs). The GPU machine is assumed to have
# Python 3.12, a CUDA 13 build of torch, transformers, accelerate, huggingface_hub, safetensors,
# tokenizers, pyarrow, pandas, xxhash, sentencepiece, protobuf, triton and torchvision (the lent
# machines' image does: /work/.library/device/KINDS.md); gpu_check.py says what is still missing.
#
# Budget: everything that travels to the GPU machine is at most 64 MiB. unsloth's wheel is ~29 MB,
# ~26 MB of it the "studio" web UI that the library never imports, and bitsandbytes' is ~43 MB: it
# bundles kernels for every CUDA, ROCm and XPU version. Both are slimmed below (studio/ dropped; only
# the CUDA 13 and CPU kernels of bitsandbytes kept, matching the image's cu130 torch), so the whole
# set is ~30 MB and one call runs every leg.
# Pure-python wheels serve any Python; the compiled ones (msgspec, hf_transfer, torchao, SQLAlchemy,
# greenlet, pydantic-core) are fetched for CPython 3.12 on x86-64 Linux (PY=3.11 etc. to change it).
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
# What `python -m app.main train` imports beyond the image, at the versions the dev venv resolved.
RECORDS=("$(pin sqlmodel)" "SQLAlchemy==2.1.9" "greenlet==3.5.6" "pydantic==2.14.4" "pydantic_core==2.50.5"
         "annotated-types==0.8.0" "typing-inspection==0.4.5")
WANT=("$(pin trl)" "$(pin datasets)" "$(pin peft)" "$(pin bitsandbytes)" "$(pin unsloth)" "${EXTRA[@]}" "${RECORDS[@]}")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DIR" "${WANT[@]}" 2>&1 \
    | grep -v "^WARNING: Location" || true

# Drop what nothing here loads, keeping each wheel installable (its RECORD rewritten to match).
python3 - "$DIR" <<'EOF'
import pathlib, re, sys, zipfile

DROP = {"bitsandbytes": re.compile(r"bitsandbytes/libbitsandbytes_(?!cuda13|cpu)"),  # other CUDA/ROCm/XPU builds
        "unsloth": re.compile(r"studio/")}                                          # unsloth's web UI
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    drop = DROP.get(wheel.name.split("-")[0])
    if drop is None:
        continue
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if drop.match(info.filename):
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                kept = [line for line in data.decode().splitlines() if not drop.match(line.split(",")[0])]
                data = ("\n".join(kept) + "\n").encode()
            zout.writestr(info, data)
    slim.replace(wheel)
EOF

ls -l "$DIR"/*.whl | awk '{printf "%8.1f MB  %s\n", $5 / 1e6, $9}'
total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
printf '%8.1f MB  total (%.1f MiB; the budget is 64 MiB with the repo itself)\n' "$(echo "$total / 1000000" | bc -l)" \
    "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt $((60 * 1048576)) ]; then
    echo "over budget: leave room for the working tree (git ls-files | xargs du -cb)" >&2
    exit 1
fi
