#!/bin/sh
# The CPU inference peers' own virtual environments (optimum pins an older transformers than ours, so each
# peer lives beside the toolkit, not in it):
#
#   sh benchmarks/encode_throughput/peers_env.sh [VENV_ROOT]     # default: ~/.cache/finbert2/peer-venvs
#
# VENV_ROOT/onnx      sentence-transformers' ONNX backend (optimum-onnx) and fastembed
# VENV_ROOT/openvino  sentence-transformers' OpenVINO backend (optimum-intel, NNCF)
# Both see the system's CPU torch (--system-site-packages; pip would otherwise pull a CUDA build) and pin
# the versions the shared CPU_INFERENCE_PEERS.md measured with. peers.py runs inside them; backends.py
# starts it (--peer_venvs VENV_ROOT) between its own rounds.
set -e
ROOT=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/finbert2/peer-venvs}
PYTHON=${PYTHON:-python}
mkdir -p "$ROOT"
# keep the system's torch: unconstrained, optimum-intel's resolution pulls another torch with CUDA wheels
TORCH=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$TORCH" > "$ROOT/constraints.txt"
make_venv() {  # name requirement...
    name=$1; shift
    if [ -x "$ROOT/$name/bin/python" ] && [ -f "$ROOT/$name/.complete" ]; then
        echo "peers_env: $ROOT/$name exists"
        return 0
    fi
    rm -rf "$ROOT/$name"
    "$PYTHON" -m venv --system-site-packages "$ROOT/$name"
    "$ROOT/$name/bin/python" -m pip install --progress-bar off -q -c "$ROOT/constraints.txt" "$@"
    # optimum-intel can pull a torchvision built for another torch, which breaks importing the CPU torch
    "$ROOT/$name/bin/python" -m pip uninstall -y -q torchvision 2>/dev/null || true
    "$ROOT/$name/bin/python" -c "import torch, sentence_transformers; print('$name:', torch.__version__, sentence_transformers.__version__)"
    touch "$ROOT/$name/.complete"
}
make_venv onnx transformers==4.57.6 sentence-transformers==5.7.0 optimum==2.1.0 optimum-onnx==0.1.0 \
    onnxruntime==1.32.0 onnx==1.23.2 fastembed==0.9.1 datasets==4.4.2  # the system's datasets needs a newer hub
make_venv openvino transformers==5.5.4 sentence-transformers==6.3.0 optimum==2.3.0 optimum-intel==2.2.0 \
    openvino==2026.4.1 openvino-tokenizers==2026.4.1.0 nncf==3.4.0 datasets
echo "peers_env: ready in $ROOT"
