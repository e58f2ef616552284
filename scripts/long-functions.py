#!/usr/bin/env python3
"""Lists functions longer than a limit (120 lines by default) outside tests.

A function runs from its `fn` line to the closing brace at the same indent. Test modules
(`#[cfg(test)] mod tests`), `tests/`, `benches/` and `fuzz/` are not scanned. Run from the
repository root: `scripts/long-functions.py [LIMIT]`; exits 1 if any function is longer.
"""
import os
import re
import sys

FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def scan(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    out = []
    for i, l in enumerate(lines):
        if re.match(r"^#\[cfg\(test\)\]", l) and i + 1 < len(lines) and "mod tests" in lines[i + 1]:
            break
        m = FN.match(l)
        if not m or l.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j] == indent + "}":
                out.append((j - i + 1, m.group(7), i + 1))
                break
    return out


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 120
    long = []
    for root, dirs, files in os.walk("crates"):
        dirs[:] = [d for d in dirs if d not in ("tests", "benches", "target")]
        for f in files:
            if f.endswith(".rs") and f != "tests.rs":
                p = os.path.join(root, f)
                long += [(n, name, p, line) for n, name, line in scan(p) if n > limit]
    for n, name, p, line in sorted(long, reverse=True):
        print(f"{n:4} lines  {name}  {p}:{line}")
    if not long:
        print(f"no function over {limit} lines")
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main())
