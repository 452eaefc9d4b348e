#!/usr/bin/env bash
# Replaces k8s/tests/schemas/keda.sh_*.yaml, the KEDA CRDs that the manifest tests validate
# against, with those of a kedacore/keda release tag or commit (default: the one the files come
# from, see k8s/tests/schemas/README.md). Needs curl and network access to GitHub.
#
#   scripts/fetch-keda-schemas.sh [REF]
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:-8b4f083ca8c8c2baf8477e322bd4d16ac4dfa09a}
dest=k8s/tests/schemas
for crd in keda.sh_scaledobjects.yaml keda.sh_triggerauthentications.yaml; do
  tmp=$(mktemp)
  curl --proto '=https' -fsSL "https://raw.githubusercontent.com/kedacore/keda/$ref/config/crd/bases/$crd" -o "$tmp"
  grep -q '^kind: CustomResourceDefinition' "$tmp" || { echo "$crd at $ref is not a CRD" >&2; rm -f "$tmp"; exit 1; }
  mv "$tmp" "$dest/$crd"
  chmod 644 "$dest/$crd"
  echo "$dest/$crd <- kedacore/keda@$ref"
done
echo "Now record $ref in $dest/README.md and run: cargo test --release --test deploy k8s_manifests::"
