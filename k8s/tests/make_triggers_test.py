#!/usr/bin/env python3
"""Writes k8s/tests/triggers.test.yaml, the promtool cases of the KEDA trigger queries.

    python3 k8s/tests/make_triggers_test.py     # then: promtool test rules k8s/tests/triggers.test.yaml

Standard library only. The queries are those of k8s/autoscaling/keda-gpu-scaler.yaml, verbatim
(tests/deploy/k8s_promql.rs checks that every `expr` is a shipped query and that each is covered with 1,
3 and 8 pods). Every pod exports both priorities, and a pod of another namespace exports large
values: only the interactive series of namespace virtualfit may count.
"""

import os

NS = 'namespace="virtualfit"'
BUSY = 'sum(rate(virtualfit_model_busy_share_seconds_total{namespace="virtualfit",priority="interactive"}[2m]))'
QUEUE = 'sum(virtualfit_queued_items{namespace="virtualfit",priority="interactive"})'
ACTIVE = 'sum(virtualfit_active_items{namespace="virtualfit",priority="interactive"})'
BACKLOG = 'sum(virtualfit_queued_seconds{namespace="virtualfit",priority="interactive"})'
SAMPLES = 21  # 0m .. 20m, one a minute

# Per pod i: interactive busy seconds per minute, queued and active interactive items, queued
# interactive seconds. Batch series carry other values, which must not count.
BUSY_PER_MIN = [45, 15, 30, 60, 15, 30, 45, 60]  # rates of exact binary fractions
QUEUED = [7, 0, 4, 2, 9, 1, 3, 5]
ACTIVE_ITEMS = [9, 2, 6, 3, 12, 2, 5, 8]
QUEUED_S = [0.5, 0.0, 0.25, 1.5, 2.0, 0.125, 0.75, 1.0]


def constant(v):
    return f"{v}x{SAMPLES - 1}"


def counter(per_min):
    return " ".join(str(per_min * m) for m in range(SAMPLES))


def pod_series(ns, pod, i, scale=1):
    labels = lambda p: f'{{namespace="{ns}",pod="{pod}",priority="{p}"}}'
    out = []
    for metric, interactive, batch in [
        ("virtualfit_model_busy_share_seconds_total", counter(BUSY_PER_MIN[i] * scale), counter(15 * scale)),
        ("virtualfit_queued_items", constant(QUEUED[i] * scale), constant(16 * scale)),
        ("virtualfit_active_items", constant(ACTIVE_ITEMS[i] * scale), constant(16 * scale)),
        ("virtualfit_queued_seconds", constant(QUEUED_S[i] * scale), constant(40 * scale)),
    ]:
        out.append((metric + labels("interactive"), interactive))
        out.append((metric + labels("batch"), batch))
    return out


def group(n):
    series = []
    for i in range(n):
        series += pod_series("virtualfit", f"virtualfit-inference-{i}", i)
    series += pod_series("virtualfit-eu-west", "virtualfit-inference-eu-0", 0, scale=100)
    if n == 0:
        cases = [(q, []) for q in (BUSY, QUEUE, ACTIVE, BACKLOG)]
    else:
        cases = [
            (BUSY, [sum(BUSY_PER_MIN[:n]) / 60]),
            (QUEUE, [sum(QUEUED[:n])]),
            (ACTIVE, [sum(ACTIVE_ITEMS[:n])]),
            (BACKLOG, [sum(QUEUED_S[:n])]),
        ]
    lines = [f"- name: {n} pods", "  interval: 1m", "  input_series:"]
    for s, values in series:
        lines += [f"  - series: {s}", f"    values: {values}"]
    lines.append("  promql_expr_test:")
    for expr, values in cases:
        lines += [f"  - expr: {expr}", "    eval_time: 10m"]
        if values:
            lines.append("    exp_samples:")
            for v in values:
                lines += ["    - labels: '{}'", f"      value: {round(v, 6)}"]
        else:
            lines.append("    exp_samples: []")
    return lines


HEADER = """# promtool test rules k8s/tests/triggers.test.yaml
# Written by k8s/tests/make_triggers_test.py: edit that, then run it.
#
# The KEDA trigger queries of k8s/autoscaling/keda-gpu-scaler.yaml, verbatim, against synthetic
# series of 0, 1, 3 and 8 inference pods. Every pod exports both priorities; only the interactive
# series count (batch work never scales the interactive Deployment). A pod of another namespace
# (virtualfit-eu-west) exports large values that must not count either.
#
# - Every query returns exactly one sample: the cluster-wide sum, which KEDA divides by the
#   per-replica threshold (AverageValue).
# - gpu-busy is the rate of the interactive share of the model's busy seconds over 2 minutes:
#   pod i adds a fixed number of seconds a minute, so the sum is their total over 60.
# - With no pod at all, every sum is empty. The triggers set ignoreNullValues "false", so KEDA
#   reads that as an error (the HPA then does not scale down, and the fallback holds the count)
#   instead of as an idle cluster.
rule_files: []
evaluation_interval: 1m
tests:"""


def main():
    lines = HEADER.splitlines()
    for n in (1, 3, 8, 0):
        lines += group(n)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triggers.test.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
