"""Reads a Prometheus text exposition on stdin with the official client's
parser (prometheus_client, from PyPI) and prints it as JSON: a list of
families, each with its name, type and samples (name, labels, value).
A line the parser refuses fails the script."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": f.name,
        "type": f.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples],
    })
json.dump(families, sys.stdout)
