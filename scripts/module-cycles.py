#!/usr/bin/env python3
"""Import cycles among the modules of src/, at every level: every file is a module
(`build/mod.rs` is `build`, `build/units.rs` is `build/units`, `commands/build.rs` is
`commands/build`). Paths read from each file (use lines, brace groups, inline paths;
comments and its `#[cfg(test)] mod tests` left out): `crate::a::b`, `super::x`, `self::x`
and a child module's name (`units::f` in build/mod.rs), each taken to the deepest module
it names. The graph is checked at every depth: depth 1 folds every module into its
top-level one (`build/units` -> `build`), depth 2 into `build/units`, ..., the last depth
is the file graph. Strongly connected components of more than one module are printed with
their edges. `--commands` also fails when a command module imports another one.
Usage: scripts/module-cycles.py [src] [--leaf MODULE...] [--commands]; docs/architecture.md."""
import os, re, sys, collections

root = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "src"
mods = {}  # module path (tuple) -> file
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs"):
            continue
        p = os.path.join(dp, f)
        parts = os.path.relpath(p, root).removesuffix(".rs").split(os.sep)
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts in (["main"], ["lib"]) or not parts:
            continue
        mods[tuple(parts)] = p


def deepest(path):
    """The deepest module that a path (tuple of names) reaches, or None."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None


def expand(s):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"] (one use tree)."""
    s = s.strip()
    i = s.find("{")
    if i < 0:
        return [s]
    prefix, body = s[:i], s[i + 1 : s.rfind("}")]
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    out = []
    for it in items:
        if it.strip():
            out += [prefix + e for e in expand(it)]
    return out


def resolve(me, is_dir, path):
    """A path's names (list) seen from module `me` -> the module it reaches."""
    path = [x for x in path if x]
    if not path:
        return None
    if path[0] == "crate":
        return deepest(path[1:])
    base = list(me)
    if path[0] == "self":
        return deepest(base + path[1:])
    if path[0] == "super":
        while path and path[0] == "super":
            base = base[:-1]
            path = path[1:]
        return deepest(base + path)
    # a child module's name, used without self::
    if tuple(base + path[:1]) in mods:
        return deepest(base + path)
    return None


g = collections.defaultdict(set)  # file-level edges
for me, p in mods.items():
    src = open(p).read()
    # drop #[cfg(test)] modules: tests may use anything
    m2 = re.search(r"#\[cfg\(test\)\]\s*\n\s*(pub(\(crate\))? )?mod tests", src)
    if m2:
        src = src[: m2.start()]
    src = re.sub(r"//[^\n]*", "", src)  # comments (doc links are not imports)
    paths = []
    for u in re.findall(r"\buse\s+([^;]*);", src, re.S):
        for e in expand(re.sub(r"\s+", "", u)):
            e = re.sub(r"\bas\w+$", "", e)
            paths.append(e.split("::"))
    src_no_use = re.sub(r"\buse\s+[^;]*;", "", src, flags=re.S)
    for t in re.findall(r"\b((?:crate|super|self|[a-z_][a-z_0-9]*)(?:::[a-z_][a-z_0-9]*)+)", src_no_use):
        paths.append(t.split("::"))
    for path in paths:
        t = resolve(me, p.endswith("mod.rs"), path)
        if t and t != me:
            g[me].add(t)


def sccs_of(graph, nodes):
    idx, low, st, on, out, c = {}, {}, [], set(), [], [0]

    def sc(v):
        idx[v] = low[v] = c[0]
        c[0] += 1
        st.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in idx:
                sc(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in idx:
            sc(v)
    return out


name = "/".join
depth_max = max(len(m) for m in mods)
total = 0
for d in range(1, depth_max + 1):
    fold = lambda m: m[:d]
    nodes = {fold(m) for m in mods}
    h = collections.defaultdict(set)
    for a, ts in g.items():
        for b in ts:
            if fold(a) != fold(b):
                h[fold(a)].add(fold(b))
    for s in sccs_of(h, nodes):
        total += 1
        print(f"cycle (depth {d}):", " ".join(name(x) for x in s))
        for a in s:
            print("  ", name(a), "->", " ".join(sorted(name(x) for x in h[a] if x in s)))
bad = []
for a, ts in sorted(g.items()):
    for b in sorted(ts):
        if len(a) == 2 and a[0] == "commands" and b[:1] == ("commands",) and b != ("commands",):
            bad.append((a, b))
for a, b in bad:
    print("command imports command:", name(a), "->", name(b))
print("modules:", len(mods), "cycles:", total, "command imports:", len(bad))
if "--leaf" in sys.argv:
    for m in sys.argv[sys.argv.index("--leaf") + 1 :]:
        if m.startswith("--"):
            break
        print(m, "imports", sorted(name(x) for x in g[tuple(m.split("/"))]))
sys.exit(1 if total or bad else 0)
