#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (its driver, nvcc, cuda-bindings; torch with CUDA for
# the benchmark): the CUDA checks and the benchmark against cuDNN, in one go, in a few
# minutes. Runs from the checkout without installing it (the kernel cache is off, so
# platformdirs is not needed). Prints:
#   - the GPU tests of tests/test_cuda.py (every spec and random specs on the GPU);
#   - `convgen check -t cuda` of every spec in specs/, on the GPU;
#   - `convgen bench -t cuda -v` of specs/bench: GFLOP/s against PyTorch's cuDNN convolution.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export CONVGEN_CACHE=off PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$PYTHON" - <<'PY'
import shutil, sys
from convgen.codegen.cuda import runner
where = runner()
print(f"cuda kernels run: {where} (nvcc: {shutil.which('nvcc')})")
sys.exit(0 if where != "emulator" else "no GPU usable here: need a GPU, its driver, nvcc and cuda-bindings")
PY

echo "== GPU tests"
"$PYTHON" -m pytest -q -p no:cacheprovider -n 4 tests/test_cuda.py -k "test_gpu_ or barrier or race"

echo "== convgen check -t cuda, every spec"
status=0
while IFS= read -r spec; do
    "$PYTHON" -m convgen.cli check "$spec" -t cuda --seed 1 | head -1 || status=1
done < <(find specs -name '*.yaml' -not -path 'specs/targets/*' | sort)

echo "== convgen bench -t cuda specs/bench"
"$PYTHON" -m convgen.cli bench specs/bench -t cuda -v
exit $status
