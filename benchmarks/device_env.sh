# Sourced by the benchmarks/run_*_gpu.sh scripts on the device tool's machine (repository root as
# the working directory): installs the carried wheels (folder $WHEELS, default .whl) into /tmp/site
# and builds the vividhead namespace in /tmp/pkg (a copy of the root package, with its models/ and
# streaming/, plus links to the top-level parts), then puts both first on PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${WHEELS:-.whl}"/*.whl || exit 1
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r vividhead /tmp/pkg/vividhead
for p in curation training inference evaluation datasets_card; do [ -d "$p" ] && ln -sfn "$PWD/$p" "/tmp/pkg/vividhead/$p"; done
export PYTHONPATH=/tmp/site:/tmp/pkg
