#!/usr/bin/env bash
# Regenerate the betterproto NRI types from the vendored NRI api.proto (as gen-cri.sh does
# for the CRI's): crib_common/nri_proto/api.proto -> crib_common/nri/.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
proto_dir="$here/libs/common/crib_common/nri_proto"
out="$here/libs/common/crib_common/nri"
python3 -m pip install -q "betterproto[compiler]==2.0.0b7" grpcio-tools
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m grpc_tools.protoc -I "$proto_dir" --python_betterproto_out="$tmp" "$proto_dir/api.proto"
rm -rf "$out"
mkdir -p "$out/v1alpha1"
cp "$tmp/nri/pkg/api/v1alpha1/__init__.py" "$out/v1alpha1/__init__.py"
printf '"""Generated NRI types (see ../nri_proto/ORIGIN.md). Do not edit."""\n' > "$out/__init__.py"
echo "generated $out/v1alpha1/__init__.py"
