#!/usr/bin/env bash
# Builds Weft: dist/weft (the CNI plugin; dist/weft-etcd is it with the etcd client) and dist/weft-agent (all NativeAOT), and dist/weftctl. Idempotent; installs missing Debian packages.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-deps.sh
mkdir -p dist
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet publish src/Weft.Cni/Weft.Cni.csproj -c Release -r linux-x64 -o .tmp/publish/weft -nologo -v quiet
install -m 0755 .tmp/publish/weft/weft dist/weft
# The same plugin with the etcd client linked in; weft execs it for etcd:// datastores (see src/Weft.Cni/Weft.Cni.csproj).
dotnet publish src/Weft.Cni/Weft.Cni.csproj -c Release -r linux-x64 -p:WeftEtcd=true -o .tmp/publish/weft-etcd -nologo -v quiet
install -m 0755 .tmp/publish/weft-etcd/weft dist/weft-etcd
dotnet publish src/Weft.Agent/Weft.Agent.csproj -c Release -r linux-x64 -o .tmp/publish/weft-agent -nologo -v quiet
install -m 0755 .tmp/publish/weft-agent/weft-agent dist/weft-agent
dotnet publish src/Weft.Ctl/Weft.Ctl.csproj -c Release -r linux-x64 --self-contained false -p:PublishSingleFile=true -o .tmp/publish/weftctl -nologo -v quiet
install -m 0755 .tmp/publish/weftctl/weftctl dist/weftctl
echo "built: $(ls dist | tr '\n' ' ')"
