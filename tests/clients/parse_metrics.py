"""Parses OpenMetrics text (stdin) with the Prometheus project's own parser
and prints every sample as JSON lines: {"name", "labels", "value"}, then
one {"families": [...]} line with each family's name and type. A text the
parser refuses exits 1 with its complaint.

Usage: parse_metrics.py < metrics.txt   (the venv has prometheus-client)"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    families = []
    try:
        for family in text_string_to_metric_families(text):
            families.append({"name": family.name, "type": family.type})
            for sample in family.samples:
                print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))
    except ValueError as err:
        print("not valid OpenMetrics text: %s" % err, file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"families": families}))


if __name__ == "__main__":
    main()
