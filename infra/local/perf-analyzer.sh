#!/usr/bin/env bash
# Triton's perf_analyzer, installed into .venv/opt/perf_analyzer/ (bin/perf_analyzer + lib/ of the two shared
# libraries it links). The current tritonclient/perf-analyzer wheels here do not ship the binary; the
# tritonclient==2.41.0 wheel does (tritonclient-2.41.0.data/data/bin/perf_analyzer). The project pins
# tritonclient[http]==2.73.0, so the old wheel is never installed: only its binary is extracted.
# perf_analyzer needs libb64.so.0d and libcudart.so.12: the nvidia-pytriton wheel in .venv bundles both, under
# hashed names, in site-packages/nvidia_pytriton.libs/; lib/ holds symlinks to them under their plain names
# (run it with lib/ on LD_LIBRARY_PATH: recforge.inference.triton.perf_analyzer does).
# Idempotent: a no-op when the same wheel (by SHA-256) is installed and the library links resolve.
#   infra/local/perf-analyzer.sh        (called by `make setup`; needs .venv)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
venv=${RECFORGE_VENV:-$here/.venv}
py=$venv/bin/python
version=2.41.0
wheel=tritonclient-$version-py3-none-manylinux1_x86_64.whl
wheel_sha256=cf4ed5df836fa99937678a9fd852f86ba05c7b83656dd0a540e20afdb9ab4629
binary_sha256=f1e1becf820f0b116d8d1745c50569e30d42ddace5a8bccf610914738bdacc8c
member=tritonclient-$version.data/data/bin/perf_analyzer
opt=$venv/opt/perf_analyzer
stamp=$opt/wheel.sha256

[ -x "$py" ] || { echo "perf-analyzer.sh: $py is missing; create the venv first (make setup)" >&2; exit 1; }

if [ "$(cat "$stamp" 2>/dev/null)" = "$wheel_sha256" ] && [ -x "$opt/bin/perf_analyzer" ] \
   && [ -e "$opt/lib/libb64.so.0d" ] && [ -e "$opt/lib/libcudart.so.12" ]; then
  exit 0
fi

libs=$("$py" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("pytriton"); print(pathlib.Path(next(iter(s.submodule_search_locations))).parent / "nvidia_pytriton.libs") if s else None')
[ -d "$libs" ] || { echo "perf-analyzer.sh: nvidia_pytriton.libs not found ($libs); install the venv (make setup)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "perf_analyzer: downloading $wheel (binary only; not installed into the venv)"
"$py" -m pip download -q --no-deps --only-binary=:all: "tritonclient==$version" -d "$tmp"
actual=$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)
if [ "$actual" != "$wheel_sha256" ]; then
  echo "perf-analyzer.sh: $wheel has SHA-256 $actual, expected $wheel_sha256; not installing it" >&2; exit 1
fi
"$py" - "$tmp/$wheel" "$member" "$tmp/perf_analyzer" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
actual=$(sha256sum "$tmp/perf_analyzer" | cut -d' ' -f1)
if [ "$actual" != "$binary_sha256" ]; then
  echo "perf-analyzer.sh: extracted perf_analyzer has SHA-256 $actual, expected $binary_sha256" >&2; exit 1
fi

mkdir -p "$opt/bin" "$opt/lib"
chmod 755 "$tmp/perf_analyzer"
mv -f "$tmp/perf_analyzer" "$opt/bin/perf_analyzer"
for pair in "libb64.so.0d:libb64-*.so.0d" "libcudart.so.12:libcudart-*.so.12*"; do
  name=${pair%%:*}
  found=$(compgen -G "$libs/${pair#*:}" | head -1 || true)
  [ -n "$found" ] || { echo "perf-analyzer.sh: no ${pair#*:} in $libs (needed as $name)" >&2; exit 1; }
  ln -sfn "$found" "$opt/lib/$name"
done

if ! LD_LIBRARY_PATH="$opt/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$opt/bin/perf_analyzer" --version >"$tmp/version" 2>&1; then
  echo "perf-analyzer.sh: $opt/bin/perf_analyzer does not run:" >&2; cat "$tmp/version" >&2; exit 1
fi
echo "$wheel_sha256" >"$stamp"
echo "$(grep -m1 . "$tmp/version") installed in $opt (wheel SHA-256 verified)"
