#!/usr/bin/env bash
# Add TL Studio to the Linux desktop menu (per user). Run from the unpacked bundle folder:
#   ./install-desktop.sh            (installs)      ./install-desktop.sh --remove
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
APPS="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
ICONS="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/256x256/apps"
if [ "${1:-}" = "--remove" ]; then
  rm -f "$APPS/tlstudio.desktop" "$ICONS/tlstudio.png"
  echo "removed"
  exit 0
fi
mkdir -p "$APPS" "$ICONS"
cp "$HERE/tlstudio.png" "$ICONS/tlstudio.png"
sed -e "s|^Exec=.*|Exec=\"$HERE/tlstudio\" %f|" -e "s|^TryExec=.*|TryExec=$HERE/tlstudio|" \
  "$HERE/tlstudio.desktop" > "$APPS/tlstudio.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$APPS" || true
echo "installed $APPS/tlstudio.desktop"
