#!/usr/bin/env bash
# Replaces k8s/tests/schemas/monitoring.coreos.com_*.yaml, the Prometheus Operator CRDs that the
# manifest tests validate k8s/components/prometheus-operator against, with those of a
# prometheus-operator/prometheus-operator release tag or commit (default: the one the files
# come from, see k8s/tests/schemas/README.md). Needs curl and network access to GitHub.
#
#   scripts/fetch-prometheus-operator-schemas.sh [REF]
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:-v0.93.0}
dest=k8s/tests/schemas
for crd in monitoring.coreos.com_podmonitors.yaml monitoring.coreos.com_prometheusrules.yaml; do
  tmp=$(mktemp)
  curl --proto '=https' -fsSL "https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/$ref/example/prometheus-operator-crd/$crd" -o "$tmp"
  grep -q '^kind: CustomResourceDefinition' "$tmp" || { echo "$crd at $ref is not a CRD" >&2; rm -f "$tmp"; exit 1; }
  mv "$tmp" "$dest/$crd"
  chmod 644 "$dest/$crd"
  echo "$dest/$crd <- prometheus-operator/prometheus-operator@$ref"
done
echo "Now record $ref in $dest/README.md and run: cargo test --release --test deploy k8s_manifests::"
