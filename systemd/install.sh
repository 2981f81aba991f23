#!/usr/bin/env bash
# Install the door daemon as a systemd service on Raspberry Pi OS 64-bit (Bookworm).
# Run from the repository root, as root, after building the models on a development machine
# (`make models`) and copying them into ./models:   sudo systemd/install.sh
# Options: --no-start (install and enable only), --prefix DIR (default /opt/edge-face).
set -euo pipefail

PREFIX=/opt/edge-face
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-start) START=0 ;;
    --prefix) PREFIX="$2"; shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
[ -f pyproject.toml ] && [ -d edge ] || { echo "run from the repository root" >&2; exit 1; }
for f in models/facenet/facenet_dynamic.tflite models/facenet/facenet_dynamic.json models/mtcnn models/landmarks; do
  [ -e "$f" ] || { echo "$f is missing: build the models first (make models) and copy models/ here" >&2; exit 1; }
done

# System packages: venv, GPIO backend and the Pi camera stack come from Raspberry Pi OS.
apt-get update
apt-get install -y --no-install-recommends python3-venv python3-lgpio python3-picamera2 mosquitto-clients

# A dedicated user that may use the camera and the GPIO chip, and nothing else.
getent group gpio >/dev/null || groupadd --system gpio
if ! id edge-face >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/edge-face --no-create-home --shell /usr/sbin/nologin \
          --groups video,gpio edge-face
fi

# Code, models and a virtual environment that can see the apt-installed lgpio and picamera2.
install -d -m 0755 "$PREFIX"
cp -r edge pyproject.toml config.yaml "$PREFIX"/
[ -f README.md ] && cp README.md "$PREFIX"/
install -d -m 0755 "$PREFIX/docs" "$PREFIX/models"
cp -r docs/. "$PREFIX/docs/"
cp -r models/facenet models/mtcnn models/landmarks "$PREFIX/models/"
python3 -m venv --system-site-packages "$PREFIX/.venv"
"$PREFIX/.venv/bin/pip" install --upgrade pip
"$PREFIX/.venv/bin/pip" install "$PREFIX"
chown -R root:root "$PREFIX"

# The config is readable by the daemon, writable only by root; the secret may live in it.
install -d -m 0750 -o root -g edge-face /etc/edge-face
if [ ! -f /etc/edge-face/config.yaml ]; then
  sed -e "s#^  path: models/#  path: $PREFIX/models/#" -e "s#^  mtcnn_dir: models/#  mtcnn_dir: $PREFIX/models/#" \
      -e "s#^  models_dir: models/#  models_dir: $PREFIX/models/#" \
      config.yaml > /etc/edge-face/config.yaml
  chown root:edge-face /etc/edge-face/config.yaml
  chmod 0640 /etc/edge-face/config.yaml
  echo "wrote /etc/edge-face/config.yaml: set device_id, mqtt.* and relay.* for this door"
fi
"$PREFIX/.venv/bin/python" -m edge.daemon --config /etc/edge-face/config.yaml --check-config

sed "s#/opt/edge-face#$PREFIX#g" systemd/edge-face.service > /etc/systemd/system/edge-face.service
systemd-analyze verify /etc/systemd/system/edge-face.service
systemctl daemon-reload
systemctl enable edge-face.service
if [ "$START" -eq 1 ]; then
  systemctl restart edge-face.service
  systemctl --no-pager status edge-face.service || true
fi
echo "installed. Enroll people into /var/lib/edge-face/gallery.db as the edge-face user (see docs/daemon.md),"
echo "then: sudo systemctl reload edge-face   (re-reads the config and the gallery)"
