#!/usr/bin/env python3
"""Import cycles among src/ top-level modules: the graph of `crate::<module>` paths in each
module's files (use lines, inline paths; comments and its `#[cfg(test)] mod tests` left
out), its
strongly connected components of more than one module printed with their edges.
Usage: scripts/module-cycles.py [src] [--leaf MODULE...]; docs/architecture.md."""
import os, re, sys, collections
root = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "src"
mods = {}
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs"): continue
        p = os.path.join(dp, f)
        rel = os.path.relpath(p, root)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top in ("main", "lib"): continue
        mods.setdefault(top, []).append(p)
g = collections.defaultdict(set)
for m, files in mods.items():
    for p in files:
        src = open(p).read()
        # drop #[cfg(test)] modules: tests may use anything
        m2 = re.search(r"#\[cfg\(test\)\]\n(pub(\(crate\))? )?mod tests", src)
        if m2: src = src[:m2.start()]
        src = re.sub(r"//[^\n]*", "", src)  # comments (doc links are not imports)
        for t in re.findall(r"crate::([a-z_0-9]+)", src):
            if t != m and t in mods: g[m].add(t)
        for grp in re.findall(r"use crate::\{([^;]*)\}", src):
            for t in re.findall(r"(?:^|[,{\s])([a-z_0-9]+)::", grp):
                if t != m and t in mods: g[m].add(t)
# Tarjan
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in g[v]:
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in sorted(mods):
    if v not in idx: sc(v)
for s in sccs:
    print("cycle:", " ".join(s))
    for a in s:
        print("  ", a, "->", " ".join(sorted(x for x in g[a] if x in s)))
print("modules:", len(mods), "cycles:", len(sccs))
if "--leaf" in sys.argv:
    for m in sys.argv[sys.argv.index("--leaf")+1:]:
        print(m, "imports", sorted(g[m]))
sys.exit(1 if sccs else 0)
