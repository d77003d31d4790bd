#!/usr/bin/env bash
# Wrap the PyInstaller one-folder bundle (dist/tlstudio, made by build.sh) into a Debian package:
#   bash packaging/build_deb.sh [BUNDLE_DIR] [OUT_DIR]        (defaults: dist/tlstudio dist)
# Installs:
#   /opt/tlstudio/                     the bundle (its own Python, torch, Qt)
#   /usr/bin/tlstudio                  relative symlink to /opt/tlstudio/tlstudio (GUI and CLI)
#   /usr/share/applications/tlstudio.desktop            menu entry, MimeType=application/x-tlstudio-project
#   /usr/share/mime/packages/tlstudio.xml               *.tlsproj -> application/x-tlstudio-project
#   /usr/share/icons/hicolor/{256x256,scalable}/apps/   the icon (PNG and SVG)
# No maintainer scripts: Debian's shared-mime-info, desktop-file-utils and hicolor-icon-theme
# packages refresh their caches through dpkg triggers on install and on removal, so `dpkg -r`
# leaves nothing behind. Needs dpkg-deb (Debian/Ubuntu); fakeroot is used when not root.
# Knobs: DEB_VERSION (default: pyproject's version), DEB_MAINTAINER, DEB_COMPRESS (xz, the smallest
# and the default; gzip or zstd build faster).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$(cd "${1:-$ROOT/dist/tlstudio}" && pwd)"
OUT="${2:-$ROOT/dist}"
PKG=tlstudio
VERSION="${DEB_VERSION:-$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -1)}"
ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
MAINT="${DEB_MAINTAINER:-TL Studio developers <tlstudio@example.org>}"
COMP="${DEB_COMPRESS:-xz}"

command -v dpkg-deb >/dev/null || { echo "!! dpkg-deb not found (a Debian/Ubuntu tool): no .deb built"; exit 1; }
[ -x "$BUNDLE/tlstudio" ] || { echo "!! $BUNDLE/tlstudio not found: run packaging/build.sh first"; exit 1; }

mkdir -p "$OUT"
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/tlstudio-deb.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
chmod 0755 "$STAGE"  # mktemp makes it 0700: the package's "./" entry must not say that about /
echo "== staging $BUNDLE into a .deb ($PKG $VERSION $ARCH)"

mkdir -p "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications" "$STAGE/usr/share/mime/packages" \
  "$STAGE/usr/share/icons/hicolor/256x256/apps" "$STAGE/usr/share/icons/hicolor/scalable/apps" \
  "$STAGE/usr/share/doc/$PKG" "$STAGE/DEBIAN"
# the bundle as built; the per-user desktop files build.sh copies next to it are not needed here
cp -a "$BUNDLE" "$STAGE/opt/$PKG"
rm -f "$STAGE/opt/$PKG/install-desktop.sh" "$STAGE/opt/$PKG/tlstudio.desktop" "$STAGE/opt/$PKG/tlstudio.png"
ln -s "../../opt/$PKG/tlstudio" "$STAGE/usr/bin/tlstudio"

install -m 0644 "$ROOT/packaging/tlstudio.desktop" "$STAGE/usr/share/applications/tlstudio.desktop"
install -m 0644 "$ROOT/packaging/tlstudio-mime.xml" "$STAGE/usr/share/mime/packages/tlstudio.xml"
install -m 0644 "$ROOT/resources/icons/tlstudio.png" "$STAGE/usr/share/icons/hicolor/256x256/apps/tlstudio.png"
install -m 0644 "$ROOT/resources/icons/tlstudio.svg" "$STAGE/usr/share/icons/hicolor/scalable/apps/tlstudio.svg"
printf 'TL Studio %s\nLicense: Apache-2.0 (see the project repository). The bundle under /opt/%s\ncontains third-party libraries (Python, PyTorch, Qt for Python, timm ...) under their own licenses.\n' \
  "$VERSION" "$PKG" > "$STAGE/usr/share/doc/$PKG/copyright"
chmod -R u+rwX,go+rX,go-w "$STAGE/opt" "$STAGE/usr"

SIZE_KB="$(du -sk --apparent-size "$STAGE/opt" "$STAGE/usr" | awk '{s += $1} END {print s}')"
cat > "$STAGE/DEBIAN/control" <<EOF
Package: $PKG
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINT
Installed-Size: $SIZE_KB
Depends: libc6 (>= 2.28)
Recommends: libegl1, libfontconfig1, libxkbcommon-x11-0, libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1, libxcb-shape0, shared-mime-info, desktop-file-utils
Section: science
Priority: optional
Description: no-code transfer learning on images (desktop app and CLI)
 Train image classifiers from your own folders by transfer learning: pick a
 pretrained backbone, freeze layers, fine-tune, distil, evaluate and export
 (ONNX, TorchScript, int8). CPU build; runs offline with the bundled
 EfficientNet-Lite0 weights. Opens .tlsproj project files.
EOF

DEB="$OUT/${PKG}_${VERSION}_${ARCH}.deb"
if [ "$(id -u)" = 0 ]; then
  dpkg-deb --root-owner-group -Z"$COMP" --build "$STAGE" "$DEB" >/dev/null
elif command -v fakeroot >/dev/null; then
  fakeroot dpkg-deb -Z"$COMP" --build "$STAGE" "$DEB" >/dev/null
else
  dpkg-deb --root-owner-group -Z"$COMP" --build "$STAGE" "$DEB" >/dev/null
fi
echo "== $DEB ($(du -h "$DEB" | cut -f1) compressed, $((SIZE_KB / 1024)) MB installed)"
