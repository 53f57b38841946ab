#!/usr/bin/env bash
# One-command local demo, as root on a fresh Debian/Ubuntu machine:
#   builds the static kv and the Azure emulator, starts the emulator on Azure's real
#   addresses inside a private network namespace, runs `kv mount` exactly as kubelet does for
#   a pod using aad-pod-identity, lists the mounted files with their modes, shows a secret,
#   then unmounts. Nothing leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: sudo $0" >&2; exit 2; }

if ! command -v ip >/dev/null || ! command -v nsenter >/dev/null || ! command -v musl-gcc >/dev/null; then
  echo "== installing iproute2, util-linux, musl-tools"
  apt-get update -qq && apt-get install -y -qq iproute2 util-linux musl-tools ca-certificates >/dev/null
fi
echo "== building kv (static, release) and the emulator"
KV=$(./scripts/build-release 2>/dev/null | tail -n 1)
cargo build -q --release -p kv-emulator
export KV_EMULATOR_BIN="$PWD/target/release/kv-emulator"

# What kubelet would do: the plugin dir with kv, the pod's volume dir (0750), then
# `kv mount <dir> <json>` with the pod's flexVolume options plus kubelet's own keys.
work=$(mktemp -d /tmp/kv-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
install -D -m 0755 "$KV" "$work/plugins/azure~kv/kv"
dir="$work/kubelet/pods/5d1e0c4a-demo/volumes/azure~kv/secrets"
install -d -m 0750 "$dir"
options=$(cat <<JSON
{"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password;web-cert;web-cert;rsa-key","keyvaultobjecttypes":"secret;secret;cert;key",
 "keyvaultobjectaliases":"db-password;tls.pem;tls.crt;signing.pub","usepodidentity":"true","tenantid":"11111111-2222-3333-4444-555555555555",
 "kubernetes.io/fsType":"","kubernetes.io/readwrite":"rw","kubernetes.io/pod.name":"demo-pod","kubernetes.io/pod.namespace":"demo",
 "kubernetes.io/pod.uid":"5d1e0c4a-demo","kubernetes.io/pvOrVolumeName":"secrets","kubernetes.io/serviceAccount.name":"default",
 "kubernetes.io/mounterArgs.FsGroup":"2000"}
JSON
)
export KV_LOG_FILE="$work/kv-driver.log" DIR="$dir" OPTIONS="$options" PLUGIN="$work/plugins/azure~kv/kv"
./scripts/netns-run emulator/scenarios/example.json -- bash -c '
  set -e
  echo "== kv init";    "$PLUGIN" init; echo
  echo "== kv mount";   time "$PLUGIN" mount "$DIR" "$OPTIONS"; echo
  echo "== mount table"; grep " $DIR " /proc/self/mountinfo | cut -d" " -f5,9-
  echo "== files (mode, owner, group, size, name)"
  find "$DIR" -mindepth 1 -printf "%m %u %g %6s %P\n" | sort -k5
  echo "== cat db-password"; cat "$DIR/db-password"; echo
  echo "== head -n 1 of each PEM"; for f in tls.pem tls.crt signing.pub; do printf "%-12s %s\n" "$f" "$(head -n 1 "$DIR/$f")"; done
  echo "== kv unmount"; "$PLUGIN" unmount "$DIR"; echo
  test ! -e "$DIR" && echo "== $DIR is gone: nothing left mounted or on disk"
'
echo "== the driver log (JSON lines)"; cat "$KV_LOG_FILE"
