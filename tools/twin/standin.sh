#!/bin/sh
# STAND-IN (device twin only, tools/device_twin.py): installed as nvpmodel, jetson_clocks,
# tegrastats and nm-online in the twin's root filesystem, never on a device. It records how it
# was called in /var/log/edge-llm-twin/standins.log and answers as JetPack 6.1's tool would
# for the calls our code makes (L4T R36.4 on AGX Orin; JETSON.md):
#   nvpmodel -m N | -q   jetson_clocks [--show|--store|--restore]   tegrastats [--interval MS]
#   nm-online -s -q --timeout=N
name=$(basename "$0")
mkdir -p /var/log/edge-llm-twin
printf '%s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" "$*" >> /var/log/edge-llm-twin/standins.log
state=/var/lib/edge-llm-twin
mkdir -p "$state"
case $name in
  nvpmodel)
    case ${1:-} in
      -m) case ${2:-} in 0|1|2|3) echo "${2}" > "$state/nvpmodel" ;; *) echo "NVPM ERROR: invalid mode ${2:-}" >&2; exit 1 ;; esac ;;
      -q) mode=$(cat "$state/nvpmodel" 2>/dev/null || echo 2)
          case $mode in 0) n=MAXN ;; 1) n=MODE_15W ;; 2) n=MODE_30W ;; *) n=MODE_50W ;; esac
          printf 'NV Power Mode: %s\n%s\n' "$n" "$mode" ;;
      *) echo "nvpmodel: unsupported arguments in the stand-in: $*" >&2; exit 2 ;;
    esac ;;
  jetson_clocks)
    case ${1:-} in
      "") touch "$state/jetson_clocks" ;;
      --show) [ -e "$state/jetson_clocks" ] && echo "jetson_clocks: ON" || echo "jetson_clocks: OFF" ;;
      --store|--restore) : ;;
      *) echo "jetson_clocks: unsupported arguments in the stand-in: $*" >&2; exit 2 ;;
    esac ;;
  tegrastats)
    echo "RAM 9120/62841MB (lfb 1200x4MB) SWAP 1024/16384MB (cached 0MB) CPU [3%@729,2%@729] GR3D_FREQ 0% cpu@45.5C tj@46.1C VDD_GPU_SOC 1200mW/1200mW VDD_CPU_CV 400mW/400mW" ;;
  nm-online) : ;;  # the twin has no NetworkManager; its network is a private loopback
  *) echo "standin: unknown name $name" >&2; exit 2 ;;
esac
