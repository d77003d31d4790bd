#!/usr/bin/env bash
# Add TL Studio to the Linux desktop menu (per user). Run from the unpacked bundle folder:
#   ./install-desktop.sh            (installs)      ./install-desktop.sh --remove
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
APPS="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
ICONS="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/256x256/apps"
MIME="${XDG_DATA_HOME:-$HOME/.local/share}/mime"
if [ "${1:-}" = "--remove" ]; then
  rm -f "$APPS/tlstudio.desktop" "$ICONS/tlstudio.png" "$MIME/packages/tlstudio.xml"
  command -v update-mime-database >/dev/null && [ -d "$MIME" ] && update-mime-database "$MIME" || true
  echo "removed"
  exit 0
fi
mkdir -p "$APPS" "$ICONS" "$MIME/packages"
cp "$HERE/tlstudio.png" "$ICONS/tlstudio.png"
# .tlsproj files open in TL Studio (shared-mime-info type + MimeType in the .desktop file)
cp "$HERE/tlstudio-mime.xml" "$MIME/packages/tlstudio.xml"
command -v update-mime-database >/dev/null && update-mime-database "$MIME" || true
sed -e "s|^Exec=.*|Exec=\"$HERE/tlstudio\" %f|" -e "s|^TryExec=.*|TryExec=$HERE/tlstudio|" \
  "$HERE/tlstudio.desktop" > "$APPS/tlstudio.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$APPS" || true
echo "installed $APPS/tlstudio.desktop"
