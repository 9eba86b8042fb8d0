#!/usr/bin/env bash
# Regenerate the betterproto CRI types from the vendored api.proto.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
proto_dir="$here/libs/common/crib_common/proto"
out="$here/libs/common/crib_common/cri"
python3 -m pip install -q "betterproto[compiler]==2.0.0b7" grpcio-tools
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m grpc_tools.protoc -I "$proto_dir" --python_betterproto_out="$tmp" "$proto_dir/api.proto"
rm -rf "$out"
mkdir -p "$out/runtime/v1"
cp "$tmp/runtime/v1/__init__.py" "$out/runtime/v1/__init__.py"
printf '"""Generated CRI types (see ../proto/ORIGIN.md). Do not edit."""\n' > "$out/__init__.py"
printf '' > "$out/runtime/__init__.py"
echo "generated $out/runtime/v1/__init__.py"
