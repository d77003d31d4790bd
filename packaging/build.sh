#!/usr/bin/env bash
# Build TL Studio as a one-folder desktop app (dist/tlstudio/) with PyInstaller, report its
# size and smoke-test it. Called by `make package`.
#
# The bundle is built in its own venv (build/pkgenv) with a CPU-only torch: the default
# Linux torch wheel pulls in ~3 GB of NVIDIA libraries. Knobs (environment):
#   PKG_VENV=path        build venv (default build/pkgenv; PKG_VENV=.venv reuses the dev venv)
#   TORCH_SPEC=...       torch requirement (default: pyproject's range; e.g. "torch==2.13.0+cpu")
#   TORCH_INDEX=url      where CPU wheels live (default https://download.pytorch.org/whl/cpu);
#                        if it cannot be reached, the normal index / find-links are used
#   SKIP_SMOKE=1         do not run the smoke test after building
#   SKIP_DEB=1           do not wrap the bundle into a .deb (Linux; needs dpkg-deb)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-python3}"
PKG_VENV="${PKG_VENV:-build/pkgenv}"
# default: the torch range pyproject.toml allows, e.g. "torch>=2.2,<=2.14.1"
TORCH_PIN="$(grep -o '"torch[<>=!~][^"]*"' pyproject.toml | head -1 | tr -d '"')"
TORCH_SPEC_SET="${TORCH_SPEC:-}"
TORCH_SPEC="${TORCH_SPEC:-${TORCH_PIN:-torch}}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
VPY="$PKG_VENV/bin/python"
# try the CPU index quickly; when it cannot be reached use the normal index / find-links
IDX=(--index-url "$TORCH_INDEX" --retries 1 --timeout 20)
t0=$(date +%s)

if [ ! -x "$VPY" ]; then
  echo "== creating build venv $PKG_VENV"
  "$PY" -m venv "$PKG_VENV"
  "$VPY" -m pip install -q --upgrade pip
fi

# a CPU torch wheel in pip's find-links folders (PIP_FIND_LINKS / pip config), newest first
local_cpu_torch() {
  local dirs; dirs="${PIP_FIND_LINKS:-} $("$VPY" -m pip config get global.find-links 2>/dev/null || true)"
  for d in $dirs; do ls -1 "${d#file://}"/torch-*+cpu-*.whl 2>/dev/null; done | sort -rV | head -1
}

if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "== installing CPU torch ($TORCH_SPEC)"
  CPU_WHEEL="$(local_cpu_torch)"
  # a CPU wheel in pip's find-links that pyproject's range allows: no network needed
  if [ -z "${TORCH_SPEC_SET:-}" ] && [ -n "$CPU_WHEEL" ] && "$VPY" -m pip install -q "$CPU_WHEEL" "${TORCH_PIN:-torch}"; then
    echo "== used the local CPU wheel $CPU_WHEEL"
  elif ! "$VPY" -m pip install -q "$TORCH_SPEC" "${IDX[@]}"; then
    echo "== the CPU index $TORCH_INDEX cannot be reached: torch from the normal index (see the CUDA check below)"
    "$VPY" -m pip install -q "$TORCH_SPEC"
  fi
fi
TORCH_V="$("$VPY" -c 'import torch; print(torch.__version__.split("+")[0])')"
if ! "$VPY" -c "import torchvision" 2>/dev/null; then
  echo "== installing torchvision for torch $TORCH_V"
  "$VPY" -m pip install -q torchvision "torch==$TORCH_V" "${IDX[@]}" \
    || "$VPY" -m pip install -q torchvision "torch==$TORCH_V"
fi

echo "== installing TL Studio and PyInstaller into $PKG_VENV"
"$VPY" -m pip install -q "torch==$TORCH_V" "$ROOT[export]" "pyinstaller>=6.3"

if ! "$VPY" -c "import torchvision" 2>/dev/null; then
  # CUDA-built torchvision next to a CPU torch (no CPU torchvision wheel reachable): the same
  # shim as the bundle's runtime hook, so PyInstaller's analysis can import timm.
  echo "== torchvision ops do not load with this torch: installing the torchvision shim in $PKG_VENV"
  SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cp packaging/rthook_torchvision.py "$SITE/_tlstudio_tv_shim.py"
  echo "import _tlstudio_tv_shim" > "$SITE/_tlstudio_tv_shim.pth"
  "$VPY" -W ignore -c "import timm" || { echo "!! timm still does not import in $PKG_VENV"; exit 1; }
fi

if "$VPY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
  echo "!! torch in $PKG_VENV is a CUDA build: NVIDIA libraries are kept (bundle of several GB)."
  echo "!! For a small CPU bundle: rm -r $PKG_VENV and set TORCH_SPEC/TORCH_INDEX to a CPU wheel."
  export TLSTUDIO_KEEP_CUDA=1
fi

if [ ! -f resources/icons/tlstudio.png ]; then
  QT_QPA_PLATFORM=offscreen "$VPY" packaging/render_icon.py
fi

echo "== running PyInstaller"
"$VPY" -m PyInstaller --noconfirm --log-level WARN \
  --distpath dist --workpath build/pyinstaller packaging/tlstudio.spec

# Linux desktop integration files travel with the bundle (see packaging/README.md).
cp packaging/tlstudio.desktop packaging/tlstudio-mime.xml resources/icons/tlstudio.png packaging/install-desktop.sh \
  dist/tlstudio/

t1=$(date +%s)
echo "== bundle: dist/tlstudio ($(du -sh dist/tlstudio | cut -f1), $(find dist/tlstudio -type f | wc -l) files, built in $((t1 - t0)) s)"
echo "== build venv: $("$VPY" packaging/measure_env.py "$PKG_VENV" | head -1)"

# the Linux installer: a .deb around the bundle (Debian/Ubuntu tools; skipped elsewhere)
DEB_ARGS=()
if [ "$(uname -s)" = Linux ] && command -v dpkg-deb >/dev/null && [ -z "${SKIP_DEB:-}" ]; then
  rm -f dist/tlstudio_*.deb
  bash packaging/build_deb.sh dist/tlstudio dist
  DEB_ARGS=(--deb "$(ls -1 dist/tlstudio_*.deb | head -1)")
fi

if [ -z "${SKIP_SMOKE:-}" ]; then
  "$VPY" packaging/smoke_test.py dist/tlstudio "${DEB_ARGS[@]}"
fi
