#!/usr/bin/env bash
# Provision edge-llm on a Jetson AGX Orin with JetPack 6.1 (L4T R36.4).
# Idempotent: each step checks before it acts. --dry-run prints every action instead.
#
#   sudo jetpack/install.sh [--trtllm-wheel PATH|URL] [--wheelhouse DIR] [--swap-gb N]
#                           [--maxn] [--headless] [--kiosk] [--dry-run]
#
# Written from NVIDIA's documented JetPack 6.1 facts (shared JETSON.md); it has not been
# run on an Orin by its authors: see the README's "Not yet run on hardware".
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/edge-llm
VENV=$PREFIX/venv
CONF_DIR=/etc/edge-llm
UNIT_DIR=/etc/systemd/system
SWAPFILE=/var/swap-edge-llm
L4T_RELEASE_FILE=${L4T_RELEASE_FILE:-/etc/nv_tegra_release}
DRY=0 MAXN=0 HEADLESS=0 KIOSK=0 FORCE=0
TRTLLM_WHEEL="" WHEELHOUSE="" SWAP_GB=""

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --trtllm-wheel) TRTLLM_WHEEL=$2; shift ;;
    --wheelhouse) WHEELHOUSE=$2; shift ;;
    --swap-gb) SWAP_GB=$2; shift ;;
    --maxn) MAXN=1 ;;
    --headless) HEADLESS=1 ;;
    --kiosk) KIOSK=1 ;;
    --force) FORCE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

say() { printf '==> %s\n' "$*"; }
run() {  # an action: printed in dry-run mode, done otherwise
  if [ "$DRY" = 1 ]; then printf '+ %s\n' "$*"; else "$@"; fi
}
write_file() {  # write_file PATH MODE < content (only when it differs)
  local path=$1 mode=$2 tmp
  tmp=$(mktemp)
  cat > "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then rm -f "$tmp"; return 0; fi
  if [ "$DRY" = 1 ]; then printf '+ write %s (mode %s)\n' "$path" "$mode"; rm -f "$tmp"; return 0; fi
  install -D -m "$mode" "$tmp" "$path"
  rm -f "$tmp"
}

check_l4t() {
  say "checking for JetPack 6.1 (L4T R36.4)"
  local rel
  rel=$(head -n 1 "$L4T_RELEASE_FILE" 2>/dev/null || true)
  if [[ $rel =~ R36[^0-9].*REVISION:\ 4\. ]]; then
    say "found: $rel"
  elif [ "$FORCE" = 1 ]; then
    say "not L4T R36.4 (${rel:-no $L4T_RELEASE_FILE}); going on because of --force"
  else
    echo "install.sh: this is not JetPack 6.1 / L4T R36.4 (${rel:-no $L4T_RELEASE_FILE})." >&2
    echo "TensorRT-LLM's v0.12.0-jetson branch supports only JetPack 6.1; use --force to try anyway." >&2
    exit 1
  fi
}

apt_packages() {
  local missing=() pkg
  for pkg in python3-venv python3-pip python3-dev build-essential cmake git curl libopenblas-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "$KIOSK" = 1 ]; then
    for pkg in cage chromium-browser; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing apt packages: ${missing[*]}"
    run apt-get update
    run apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}

users_and_dirs() {
  if ! id edge-llm >/dev/null 2>&1; then
    say "creating the system user edge-llm"
    run useradd --system --home-dir /var/lib/edge-llm --shell /usr/sbin/nologin --user-group edge-llm
  fi
  # the Jetson GPU nodes (/dev/nvhost-*, /dev/nvmap) are group video/render
  run usermod -a -G video,render edge-llm
  if [ "$KIOSK" = 1 ] && ! id edge-llm-kiosk >/dev/null 2>&1; then
    run useradd --system --create-home --shell /usr/sbin/nologin --groups video,render,input edge-llm-kiosk
  fi
  run install -d -m 0755 "$PREFIX" "$CONF_DIR"
}

pip_args() {  # offline installs read a wheelhouse carried onto the device
  if [ -n "$WHEELHOUSE" ]; then printf '%s\n' --no-index --find-links "$WHEELHOUSE"; fi
}

python_env() {
  local pip=("$VENV/bin/python" -m pip install -q)
  local extra=()
  mapfile -t extra < <(pip_args)
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV (it sees JetPack's TensorRT Python bindings)"
    run python3 -m venv --system-site-packages "$VENV"
  fi
  if [ -n "$TRTLLM_WHEEL" ]; then
    if ! "$VENV/bin/python" -c 'import tensorrt_llm' >/dev/null 2>&1; then
      say "installing TensorRT-LLM 0.12.0-jetson from $TRTLLM_WHEEL"
      run "${pip[@]}" "${extra[@]}" "$TRTLLM_WHEEL"
    fi
  else
    say "no --trtllm-wheel: the daemon will use llama.cpp on CUDA (sm_87) until an engine is installed"
  fi
  say "installing jetson-stats and its jtop service"
  run pip3 install -q "${extra[@]}" 'jetson-stats>=4.2'
  run systemctl enable --now jtop.service
  say "installing edge-llm (llama.cpp built for CUDA sm_87 as the fallback engine)"
  run env EDGE_LLM_CUDA=1 CUDA_ARCH=87 PYTHON="$VENV/bin/python" VENV="$VENV" \
    PIP_EXTRA="${extra[*]}" "$SRC/tools/setup.sh" jetson
}

config_file() {
  [ -f "$CONF_DIR/edge-llm.toml" ] && return 0
  say "writing $CONF_DIR/edge-llm.toml"
  write_file "$CONF_DIR/edge-llm.toml" 0644 <<'EOF'
# edge-llm configuration; every key is listed in the README. Reload with:
#   systemctl reload edge-llm   (limits and logging; the rest needs a restart)
[server]
host = "127.0.0.1"

[model]
# path = "/var/lib/edge-llm/engines/llama-3-8b-int4"   # a TensorRT-LLM engine dir
# backend = "trtllm"
n_gpu_layers = -1

[planner]
reserve_mb = 2048   # the kiosk browser and the OS
EOF
}

units() {
  local unit changed=0
  for unit in edge-llm.service edge-llm-kiosk.service; do
    if ! cmp -s "$SRC/systemd/$unit" "$UNIT_DIR/$unit"; then
      run install -m 0644 "$SRC/systemd/$unit" "$UNIT_DIR/$unit"
      changed=1
    fi
  done
  [ "$changed" = 1 ] && run systemctl daemon-reload
  run systemctl enable edge-llm.service
  if [ "$KIOSK" = 1 ]; then run systemctl enable edge-llm-kiosk.service; fi
}

swap() {
  local gb=$SWAP_GB bytes have
  if [ -z "$gb" ]; then
    if [ -x "$VENV/bin/edge-llm" ]; then
      bytes=$("$VENV/bin/edge-llm" plan --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["plan"]["recommended_swap_bytes"])')
      gb=$(( bytes / 1024 / 1024 / 1024 ))
    else
      gb=16  # what `edge-llm plan` recommends on a 64 GB Orin
    fi
  fi
  have=$(stat -c %s "$SWAPFILE" 2>/dev/null || echo 0)
  if [ "$have" -ne $(( gb * 1024 * 1024 * 1024 )) ]; then
    say "swap file $SWAPFILE of $gb GiB (edge-llm plan: swap gives other processes room; it cannot hold the KV cache)"
    if swapon --show=NAME --noheadings | grep -qx "$SWAPFILE"; then run swapoff "$SWAPFILE"; fi
    run fallocate -l "${gb}G" "$SWAPFILE"
    run chmod 600 "$SWAPFILE"
    run mkswap "$SWAPFILE"
  fi
  swapon --show=NAME --noheadings | grep -qx "$SWAPFILE" || run swapon "$SWAPFILE"
  grep -q "^$SWAPFILE " /etc/fstab 2>/dev/null || {
    if [ "$DRY" = 1 ]; then printf '+ append "%s none swap sw 0 0" to /etc/fstab\n' "$SWAPFILE"
    else echo "$SWAPFILE none swap sw 0 0" >> /etc/fstab; fi
  }
  if systemctl is-enabled nvzramconfig >/dev/null 2>&1; then
    say "disabling zram (NVIDIA's RAM tips for LLMs)"
    run systemctl disable --now nvzramconfig
  fi
}

power() {
  if [ "$HEADLESS" = 1 ] && [ "$(systemctl get-default)" != multi-user.target ]; then
    say "booting to multi-user.target (the desktop holds about 800 MB)"
    run systemctl set-default multi-user.target
  fi
  if [ "$MAXN" = 1 ]; then
    say "MAXN power mode and locked clocks"
    run nvpmodel -m 0
    run jetson_clocks
  fi
}

main() {
  if [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then echo "install.sh: run as root (or with --dry-run)" >&2; exit 1; fi
  check_l4t
  apt_packages
  users_and_dirs
  python_env
  config_file
  units
  swap
  power
  say "done; start it with: systemctl start edge-llm  (status: systemctl status edge-llm)"
}

main
