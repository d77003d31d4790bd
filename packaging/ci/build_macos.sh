#!/usr/bin/env bash
# macOS: "TL Studio.app" (PyInstaller BUNDLE step of tlstudio.spec, .tlsproj document type in its
# Info.plist) smoke-tested, then a drag-to-Applications .dmg. Run on the oldest macOS you support,
# once per architecture. Signing/notarising (needs an Apple Developer ID) is left to the release
# pipeline: codesign --deep --options runtime, then xcrun notarytool submit --wait.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-python3.11}"
VERSION="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -1)"
"$PY" -m venv build/pkgenv
build/pkgenv/bin/python -m pip install -q --upgrade pip
# macOS torch wheels on PyPI are CPU/MPS builds already: no NVIDIA libraries to avoid
build/pkgenv/bin/python -m pip install -q torch torchvision ".[export]" "pyinstaller>=6.3"
QT_QPA_PLATFORM=offscreen build/pkgenv/bin/python packaging/render_icon.py
ICONSET=build/tlstudio.iconset
mkdir -p "$ICONSET"
for s in 16 32 128 256; do
  sips -z $s $s resources/icons/tlstudio.png --out "$ICONSET/icon_${s}x${s}.png" >/dev/null
  sips -z $((s * 2)) $((s * 2)) resources/icons/tlstudio.png --out "$ICONSET/icon_${s}x${s}@2x.png" >/dev/null
done
iconutil -c icns "$ICONSET" -o resources/icons/tlstudio.icns
build/pkgenv/bin/python -m PyInstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/tlstudio.spec
build/pkgenv/bin/python packaging/smoke_test.py dist/tlstudio
test -d "dist/TL Studio.app"
STAGE=build/dmg
rm -rf "$STAGE" && mkdir -p "$STAGE"
cp -R "dist/TL Studio.app" "$STAGE/"
ln -s /Applications "$STAGE/Applications"
DMG="dist/TLStudio-$VERSION-$(uname -m).dmg"
hdiutil create -volname "TL Studio $VERSION" -srcfolder "$STAGE" -ov -format UDZO "$DMG"
echo "== $DMG ($(du -h "$DMG" | cut -f1))"
