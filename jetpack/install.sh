#!/usr/bin/env bash
# Provision edge-llm on a Jetson AGX Orin with JetPack 6.1 (L4T R36.4).
# Idempotent: each step checks before it acts. --dry-run prints every action instead.
#
#   sudo jetpack/install.sh [--trtllm-wheel PATH --torch-wheel PATH [--cusparselt-script PATH]]
#                           [--wheelhouse DIR] [--swap-gb N] [--maxn] [--headless] [--kiosk] [--cpu] [--dry-run]
#
# --trtllm-wheel: tensorrt_llm-0.12.0 (v0.12.0-jetson) for Python 3.10 aarch64; it needs
# --torch-wheel, NVIDIA's CUDA build of torch for JetPack 6.1 (PyPI's aarch64 torch is
# CPU-only), and cuSPARSELt (README4Jetson 1.2: PyTorch's install_cusparselt.sh, fetched
# unless --cusparselt-script names a local copy). --cpu: llama.cpp for the CPU cores instead of
# CUDA sm_87 (a board whose CUDA is not installed). --swap-gb: the swap file's size (default: half
# of the RAM, 4 to 16 GiB, the rule of `edge-llm plan`, read from /proc/meminfo: no model is loaded).
# Written from NVIDIA's documented JetPack 6.1 facts (shared JETSON.md); it has not been
# run on an Orin by its authors: see the README's "Not yet run on hardware".
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/edge-llm
VENV=$PREFIX/venv
CONF_DIR=/etc/edge-llm
UNIT_DIR=/etc/systemd/system
SWAPFILE=/var/swap-edge-llm
L4T_RELEASE_FILE=${L4T_RELEASE_FILE:-/etc/nv_tegra_release}
MEMINFO=${MEMINFO:-/proc/meminfo}
# JetPack's CUDA (nvidia-jetpack -> cuda-nvcc-12-6): /usr/local/cuda/bin is on no unit's PATH
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
# jetson-stats 4.2.x is an sdist whose install (pip as root) installs and starts jtop.service;
# 7.x is a wheel that installs no service (JETSON.md): pin what we install the service of.
JETSON_STATS=4.2.12
CUDA_VERSION=12.6  # JetPack 6.1
CUSPARSELT_URL=https://raw.githubusercontent.com/pytorch/pytorch/9b424aac1d70f360479dd919d6b7933b5a9181ac/.ci/docker/common/install_cusparselt.sh
DRY=0 MAXN=0 HEADLESS=0 KIOSK=0 FORCE=0 CPU=0
TRTLLM_WHEEL="" TORCH_WHEEL="" CUSPARSELT_SCRIPT="" WHEELHOUSE="" SWAP_GB=""

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

parse_args() {
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --trtllm-wheel) TRTLLM_WHEEL=$2; shift ;;
    --torch-wheel) TORCH_WHEEL=$2; shift ;;
    --cusparselt-script) CUSPARSELT_SCRIPT=$2; shift ;;
    --wheelhouse) WHEELHOUSE=$2; shift ;;
    --swap-gb) SWAP_GB=$2; shift ;;
    --maxn) MAXN=1 ;;
    --headless) HEADLESS=1 ;;
    --kiosk) KIOSK=1 ;;
    --force) FORCE=1 ;;
    --cpu) CPU=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$TRTLLM_WHEEL" ] && [ -z "$TORCH_WHEEL" ]; then
  echo "install.sh: --trtllm-wheel needs --torch-wheel (NVIDIA's CUDA torch for JetPack 6.1; PyPI's is CPU-only)" >&2
  exit 2
fi
}

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
  # nvidia-jetpack: CUDA, cuDNN and TensorRT, which a BSP flashed with flash.sh does not have
  # python3-systemd: sd_notify and the journal for the venv (--system-site-packages), not compiled
  for pkg in nvidia-jetpack python3-venv python3-pip python3-dev python3-systemd build-essential cmake git curl \
             libopenblas-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ -n "$TRTLLM_WHEEL" ]; then  # README4Jetson 1.2, TensorRT's Python bindings for the venv, and
    # OpenMPI for mpi4py (built by pip against it), which `import tensorrt_llm` initializes
    for pkg in git-lfs ccache python3-libnvinfer python3-libnvinfer-dev libopenmpi-dev; do
      dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
  fi
  if [ "$KIOSK" = 1 ]; then
    # cog (WPE WebKit) is a plain deb in jammy: Ubuntu 22.04's chromium-browser is the snap,
    # which cannot run under NoNewPrivileges= (setuid snap-confine) in a hardened unit. cage
    # 0.1.4 as Debian and Ubuntu build it exits without /usr/bin/Xwayland ("Cannot create
    # XWayland server", cage.c), and its deb names no dependency on it (found by the device twin)
    for pkg in cage cog xwayland; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
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
    # its home is the unit's StateDirectory (/var/lib/edge-llm-kiosk), made by systemd
    run useradd --system --no-create-home --home-dir /var/lib/edge-llm-kiosk --shell /usr/sbin/nologin \
      --groups video,render,input edge-llm-kiosk
  fi
  run install -d -m 0755 "$PREFIX" "$CONF_DIR"
}

pip_args() {  # offline installs read a wheelhouse carried onto the device
  if [ -n "$WHEELHOUSE" ]; then printf '%s\n' --no-index --find-links "$WHEELHOUSE"; fi
}

python_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV (it sees JetPack's TensorRT Python bindings)"
    run python3 -m venv --system-site-packages "$VENV"
  fi
  if [ -n "$TRTLLM_WHEEL" ]; then
    trtllm_prerequisites
    if ! "$VENV/bin/python" -c 'import tensorrt_llm' >/dev/null 2>&1; then
      trtllm_wheel
    fi
  else
    say "no --trtllm-wheel: the daemon will use llama.cpp ($([ "$CPU" = 1 ] && echo "on the CPU" || echo "on CUDA, sm_87")) until an engine is installed"
  fi
  jtop_service
  local extra=() cuda=(EDGE_LLM_CUDA=0)
  mapfile -t extra < <(pip_args)
  if [ "$CPU" = 1 ]; then
    say "installing edge-llm (llama.cpp for the CPU: --cpu)"
  else
    say "installing edge-llm (llama.cpp built for CUDA sm_87 as the fallback engine)"
    check_nvcc
    mapfile -t cuda < <(cuda_env)
  fi
  run env "${cuda[@]}" PYTHON="$VENV/bin/python" VENV="$VENV" \
    PIP_EXTRA="${extra[*]}" "$SRC/tools/setup.sh" jetson
}

check_nvcc() {
  if [ "$DRY" = 0 ] && ! "$CUDA_HOME/bin/nvcc" --version >/dev/null; then
    echo "install.sh: no CUDA compiler at $CUDA_HOME/bin/nvcc (nvidia-jetpack installs it); --cpu builds for the CPU" >&2
    exit 1
  fi
}

cuda_env() {  # the environment of a CUDA build of llama.cpp, one VAR=value a line
  # A unit's PATH has no /usr/local/cuda/bin, and CMake's CUDA check looks only at $CUDACXX,
  # $CUDA_PATH and PATH (CMakeDetermineCUDACompiler.cmake): without these, "No
  # CMAKE_CUDA_COMPILER could be found" (ggml-org/llama.cpp issues 13527, 14558)
  printf '%s\n' EDGE_LLM_CUDA=1 CUDA_ARCH=87 "CUDACXX=$CUDA_HOME/bin/nvcc" "CUDA_PATH=$CUDA_HOME" \
    "PATH=$CUDA_HOME/bin:$PATH"
}

trtllm_prerequisites() {  # README4Jetson 1.2
  local pip=("$VENV/bin/python" -m pip install -q) extra=() script=$CUSPARSELT_SCRIPT
  mapfile -t extra < <(pip_args)
  # grep reads all of ldconfig's output: `grep -q` exits at the first match and, under pipefail,
  # ldconfig's SIGPIPE would make a present library look missing
  if ! ldconfig -p | grep libcusparseLt >/dev/null; then
    if [ -z "$script" ]; then
      script=/tmp/install_cusparselt.sh
      say "fetching PyTorch's install_cusparselt.sh (README4Jetson 1.2)"
      run curl -fsSL -o "$script" "$CUSPARSELT_URL"
    fi
    say "installing cuSPARSELt for CUDA $CUDA_VERSION"
    # the script runs `mkdir tmp_cusparselt` (no -p) where it is started: in a fresh folder each
    # time, or one failed attempt makes every retry fail
    # shellcheck disable=SC2016  # expanded by the inner bash
    run env CUDA_VERSION="$CUDA_VERSION" bash -c 'cd "$(mktemp -d)" && exec bash "$0"' "$(realpath -m "$script")"
  fi
  if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1; then
    say "installing the CUDA torch for JetPack 6.1 from $TORCH_WHEEL"
    run "${pip[@]}" "${extra[@]}" "$TORCH_WHEEL"
  fi
  run "${pip[@]}" "${extra[@]}" numpy==1.26.1
}

trtllm_wheel() {
  # The wheel's requirements (requirements-jetson.txt on the branch) name `torch @ https://...`,
  # which pip fetches even with --no-index, and nvidia-modelopt~=0.15.0, which has no aarch64
  # build: the wheel goes in with --no-deps and its needs are installed explicitly, as
  # dusty-nv/jetson-containers does (packages/llm/tensorrt_optimizer/tensorrt_llm/install.sh)
  local pip=("$VENV/bin/python" -m pip install -q) extra=() needs=() listed
  mapfile -t extra < <(pip_args)
  if [ "$DRY" = 1 ] && [ ! -f "$TRTLLM_WHEEL" ]; then
    listed="<the needs listed in $(basename "$TRTLLM_WHEEL")>"
  else
    listed=$(python3 "$SRC/jetpack/trtllm_needs.py" "$TRTLLM_WHEEL")
  fi
  mapfile -t needs <<< "$listed"
  say "installing TensorRT-LLM 0.12.0-jetson from $TRTLLM_WHEEL (--no-deps) and its needs: ${needs[*]}"
  run "${pip[@]}" "${extra[@]}" "${needs[@]}"
  run "${pip[@]}" "${extra[@]}" --no-deps "$TRTLLM_WHEEL"
}

jtop_service() {
  local extra=() shim
  mapfile -t extra < <(pip_args)
  if [ "$(pip3 show jetson-stats 2>/dev/null | sed -n 's/^Version: //p')" != "$JETSON_STATS" ]; then
    say "installing jetson-stats $JETSON_STATS with pip as root (its install adds jtop.service)"
    # Its setup.py runs `systemctl start jtop.service` and waits with no timeout (jtop/service.py
    # install_service, jtop/core/command.py); jtop.service is After=multi-user.target, which at
    # first boot waits for this script: pip would wait for itself. Its systemctl gets --no-block.
    if [ "$DRY" = 1 ]; then
      shim="<a folder whose systemctl adds --no-block to start>"
    else
      shim=$(mktemp -d)
      systemctl_no_block "$(command -v systemctl)" > "$shim/systemctl"
      chmod 755 "$shim/systemctl"
    fi
    run env PATH="$shim:$PATH" pip3 install -q "${extra[@]}" "jetson-stats==$JETSON_STATS"
    [ "$DRY" = 1 ] || rm -rf "$shim"
  fi
  if [ "$DRY" = 0 ] && ! systemctl cat jtop.service >/dev/null 2>&1; then
    echo "install.sh: jetson-stats $JETSON_STATS did not install jtop.service; telemetry would fall back to" \
      "psutil. Reinstall it as root: sudo pip3 install --force-reinstall jetson-stats==$JETSON_STATS" >&2
    exit 1
  fi
  # --no-block: the same cycle for our own start (found by the device twin)
  run systemctl enable jtop.service
  run systemctl start --no-block jtop.service
  # /run/jtop.sock is 0660 root:jtop: the daemon reads jtop only as a member of group jtop
  if ! id -nG edge-llm 2>/dev/null | tr ' ' '\n' | grep -qx jtop; then
    say "adding edge-llm to group jtop"
    run usermod -a -G jtop edge-llm
  fi
}

systemctl_no_block() {  # systemctl_no_block REAL: prints a systemctl that never waits for a start job
  cat <<EOF
#!/bin/sh
# written by edge-llm's install.sh for jetson-stats' setup.py: a start job is never waited for
if [ "\${1:-}" = start ]; then exec $1 --no-block "\$@"; fi
exec $1 "\$@"
EOF
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
  for unit in edge-llm.service edge-llm-kiosk.service edge-llm-clocks.service; do
    if ! cmp -s "$SRC/systemd/$unit" "$UNIT_DIR/$unit"; then
      run install -m 0644 "$SRC/systemd/$unit" "$UNIT_DIR/$unit"
      changed=1
    fi
  done
  [ "$changed" = 1 ] && run systemctl daemon-reload
  run systemctl enable edge-llm.service
  if [ "$KIOSK" = 1 ]; then run systemctl enable edge-llm-kiosk.service; fi
  # jetson_clocks does not survive a reboot: a oneshot unit sets it at every boot
  if [ "$MAXN" = 1 ]; then run systemctl enable edge-llm-clocks.service; fi
}

swap_gb() {  # half of the RAM, 4 to 16 GiB (planner.recommend_swap's rule), without loading a model
  local kb
  kb=$(awk '/^MemTotal:/ {print $2}' "$MEMINFO")
  echo $(( kb / 2 / 1024 / 1024 < 4 ? 4 : (kb / 2 / 1024 / 1024 > 16 ? 16 : kb / 2 / 1024 / 1024) ))
}

swap() {
  local gb=${SWAP_GB:-$(swap_gb)} have
  have=$(stat -c %s "$SWAPFILE" 2>/dev/null || echo 0)
  if [ "$have" -ne $(( gb * 1024 * 1024 * 1024 )) ]; then
    say "swap file $SWAPFILE of $gb GiB (swap gives other processes room; it cannot hold the KV cache)"
    if swapon --show=NAME --noheadings | grep -qx "$SWAPFILE"; then run swapoff "$SWAPFILE"; fi
    run fallocate -l "${gb}G" "$SWAPFILE"
    run chmod 600 "$SWAPFILE"
    run mkswap "$SWAPFILE"
  fi
  if ! swapon --show=NAME --noheadings | grep -qx "$SWAPFILE" && ! run swapon "$SWAPFILE"; then
    # a container (the device twin) may not turn swap on; /etc/fstab turns it on at boot
    say "swapon $SWAPFILE failed ($(systemd-detect-virt 2>/dev/null || echo no virtualization)); it is in /etc/fstab for the next boot"
  fi
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
  # set-default applies from the next boot: on this one gdm may still hold the display the
  # kiosk wants (and its memory)
  if [ "$HEADLESS" = 1 ] && systemctl is-active --quiet display-manager.service 2>/dev/null; then
    say "stopping the display manager now (it does not start again at boot)"
    run systemctl stop --no-block display-manager.service
  fi
  if [ "$MAXN" = 1 ]; then
    say "MAXN power mode (kept across reboots by nvpmodel) and locked clocks (edge-llm-clocks.service at boot)"
    run nvpmodel -m 0
    run jetson_clocks
  fi
}

main() {
  parse_args "$@"
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

# sourced (the tests call one step at a time): only define
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
