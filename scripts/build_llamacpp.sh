#!/usr/bin/env bash
# Builds llama.cpp (CPU, -march=native) from the llama.cpp copy vendored in the
# llama-cpp-python sdist on PyPI, for side-by-side speed comparisons (llama-bench).
# NEEDS NETWORK ACCESS TO PyPI and takes ~5 minutes on 2 cores. Not for CI.
#
# Usage: scripts/build_llamacpp.sh [DIR]   (DIR defaults to /work/llamacpp)
#        LLAMA_CPP_PYTHON_VERSION=0.3.36 scripts/build_llamacpp.sh   (pin a version;
#        default: newest sdist on PyPI)
# Prints the paths of llama-bench and llama-quantize on the last two lines.
#
# Converting an HF model afterwards needs python packages torch, transformers,
# numpy and sentencepiece (convert_hf_to_gguf.py imports it even for BPE vocabs):
#   python3 DIR/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py \
#       MODEL_DIR --outtype bf16 --outfile model-bf16.gguf
#   llama-quantize model-bf16.gguf model-q4km.gguf Q4_K_M
set -euo pipefail

DIR="${1:-/work/llamacpp}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-}"
JOBS="${JOBS:-2}"
mkdir -p "$DIR"
cd "$DIR"

# Locate the sdist through PyPI's JSON API. `pip download --no-binary :all:`
# would also work but builds cmake/ninja from source just to read metadata
# (tens of minutes), so fetch the tarball directly and check its sha256.
if [ -n "$VERSION" ]; then
    API="https://pypi.org/pypi/llama-cpp-python/$VERSION/json"
else
    API="https://pypi.org/pypi/llama-cpp-python/json"
fi
read -r VERSION FILE SHA URL < <(curl -fsSL "$API" | python3 -c '
import json, sys
d = json.load(sys.stdin)
u = [u for u in d["urls"] if u["packagetype"] == "sdist"][0]
# Some mirrors return a relative url; rebuild the canonical one from the digest path.
url = u["url"]
if not url.startswith("http"):
    url = "https://files.pythonhosted.org/packages/" + url.split("/packages/packages/", 1)[-1]
print(d["info"]["version"], u["filename"], u["digests"]["sha256"], url)
')
echo "llama-cpp-python $VERSION: $FILE" >&2

if [ ! -f "$FILE" ]; then
    curl -fsSL -o "$FILE.part" "$URL"
    mv "$FILE.part" "$FILE"
fi
echo "$SHA  $FILE" | sha256sum -c - >&2

SRC="$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -d "$SRC" ] || tar xzf "$FILE"

if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
    pip install --break-system-packages --only-binary :all: cmake ninja >&2
    hash -r
fi

cd "$SRC"
nice -n 5 cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
# llama-cli only exists with the server enabled in recent versions; llama-completion
# is the plain CLI. Build only the targets this version defines.
ALL_TARGETS="$(ninja -C build -t targets all)"
TARGETS=()
for t in llama-bench llama-quantize llama-completion llama-cli; do
    if grep -q "^$t:" <<<"$ALL_TARGETS"; then TARGETS+=("$t"); fi
done
nice -n 5 cmake --build build --target "${TARGETS[@]}" -j"$JOBS" >&2

echo "$SRC/build/bin/llama-bench"
echo "$SRC/build/bin/llama-quantize"
