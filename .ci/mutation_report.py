"""Per-module counts of the last mutation run (mutants/), as the table docs/testing.md keeps."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

COLUMNS = ("killed", "survived", "timeout", "no tests", "not checked")


def main() -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    listing = subprocess.run(
        [str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for line in listing.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep:
            continue
        module = name.split(".x", 1)[0]
        counts[module][status.strip()] += 1
    print("| module | " + " | ".join(COLUMNS) + " | killed of checked |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for module in sorted(counts):
        row = counts[module]
        checked = row["killed"] + row["survived"] + row["timeout"]
        share = f"{100 * (row['killed'] + row['timeout']) / checked:.0f}%" if checked else "-"
        cells = " | ".join(str(row[column]) for column in COLUMNS)
        print(f"| {module} | {cells} | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
