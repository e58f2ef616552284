#!/usr/bin/env python3
"""Fails when a crate's top-level modules depend on each other in a cycle.

A module depends on another when its code (tests and comments excluded) names
`crate::other`; items of the crate root (lib.rs / main.rs) count as a module of their
own. Run from the repository root: `scripts/module-cycles.py [crate ...]` (all crates by
default). Prints each cycle found and exits 1 if there is one.
"""
import os
import re
import sys


def strip(text):
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod tests", text, re.M)
    if cut:
        text = text[: cut.start()]
    return "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("//"))


def graph(src):
    deps = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)
            top = rel.split("/")[0].removesuffix(".rs")
            if top in ("lib", "main") or "/" in rel and top == "bin":
                top = "<root>"
            text = strip(open(os.path.join(root, f), encoding="utf-8").read())
            deps.setdefault(top, set()).update(re.findall(r"\bcrate::(\w+)", text))
    mods = set(deps)
    return {m: {d if d in mods else "<root>" for d in ds} - {m} for m, ds in deps.items()}


def cycles(g):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main():
    crates = sys.argv[1:] or sorted(os.listdir("crates"))
    bad = False
    for c in crates:
        src = os.path.join("crates", c, "src")
        if not os.path.isdir(src):
            continue
        g = graph(src)
        for comp in cycles(g):
            bad = True
            edges = ", ".join(f"{m} -> {sorted(g[m] & set(comp))}" for m in comp)
            print(f"{c}: import cycle among {comp}: {edges}")
    if not bad:
        print(f"no import cycle in {len(crates)} crates")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
