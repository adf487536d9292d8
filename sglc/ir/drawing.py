"""Draw a program graph: SVG written directly (no dependencies), PNG with matplotlib, or any
format with Graphviz's `dot` when it is installed and asked for. Nodes sit in rows by their
depth in the DAG; colors group the ops (model calls, state ops, values, control, forks)."""

from __future__ import annotations

import shutil
import subprocess
from html import escape
from pathlib import Path

import networkx as nx

from .graph import Graph
from .ops import Op

COLORS = {
    "model": "#f4b183", "state": "#9dc3e6", "value": "#c5e0b4", "control": "#d5b8ea",
    "fork": "#ff9e9e", "io": "#e7e6e6",
}
GROUP = {Op.GEN: "model", Op.SELECT: "model", Op.COMMIT: "model", Op.TEXT: "state",
         Op.APPEND: "state", Op.ROLE_BEGIN: "state", Op.ROLE_END: "state",
         Op.SCOPE_BEGIN: "state", Op.SCOPE_END: "state", Op.GET: "value", Op.PY: "value",
         Op.CONST: "value", Op.BRANCH: "control", Op.MERGE: "control", Op.FORK: "fork",
         Op.CHILD: "fork", Op.JOIN: "fork", Op.ARG: "io", Op.BEGIN: "io", Op.RET: "io"}
BOX_W, BOX_H, GAP_X, GAP_Y = 190, 34, 24, 30


def label(g: Graph, n, number: int) -> tuple[str, str]:
    """Two lines: `%N = op` and the node's most telling attribute, shortened."""
    node = g.node(n)
    a = node.attrs
    detail = next((f"{k}={a[k]!r}" for k in ("name", "role", "value", "code", "n", "index",
                                             "arm", "mode", "choices") if k in a), "")
    if len(detail) > 28:
        detail = detail[:27] + "…"
    return f"%{number} = {node.op.value}", detail


def layout(g: Graph) -> dict:
    """Node -> (x, y) of its box's top-left corner: one row per DAG depth."""
    order = g.topo_order()
    depth = {}
    for n in order:
        depth[n] = max((depth[p] + 1 for p in g.predecessors(n)), default=0)
    rows: dict[int, list] = {}
    for n in order:
        rows.setdefault(depth[n], []).append(n)
    return {n: (GAP_X + i * (BOX_W + GAP_X), GAP_Y + d * (BOX_H + GAP_Y))
            for d, row in rows.items() for i, n in enumerate(row)}


def to_svg(g: Graph) -> str:
    pos, order = layout(g), g.topo_order()
    number = {n: i for i, n in enumerate(order)}
    width = max(x for x, _ in pos.values()) + BOX_W + GAP_X
    height = max(y for _, y in pos.values()) + BOX_H + GAP_Y
    name = escape(str(g.graph.get("name", "")))
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            'font-family="monospace" font-size="11">'),
           ('<defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
            'markerHeight="6" orient="auto"><path d="M0,0L10,5L0,10z" fill="#555"/></marker>'
            '</defs>'),
           f'<text x="{GAP_X}" y="18" font-size="13">program {name}</text>']
    for u, v in g.edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        out.append(f'<line x1="{x1 + BOX_W / 2}" y1="{y1 + BOX_H}" x2="{x2 + BOX_W / 2}" '
                   f'y2="{y2}" stroke="#555" marker-end="url(#a)"/>')
    for n in order:
        x, y = pos[n]
        top, detail = label(g, n, number[n])
        color = COLORS[GROUP[g.op(n)]]
        out.append(f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4" '
                   f'fill="{color}" stroke="#333"/>')
        out.append(f'<text x="{x + 6}" y="{y + 14}">{escape(top)}</text>')
        out.append(f'<text x="{x + 6}" y="{y + 28}" fill="#333">{escape(detail)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_dot(g: Graph) -> str:
    order = g.topo_order()
    number = {n: i for i, n in enumerate(order)}
    lines = [f'digraph "{g.graph.get("name", "program")}" {{',
             '  node [shape=box, style="rounded,filled", fontname="monospace", fontsize=10];']
    for n in order:
        top, detail = label(g, n, number[n])
        text = (top + "\\n" + detail.replace("\\", "\\\\").replace('"', '\\"')).strip()
        lines.append(f'  n{number[n]} [label="{text}", fillcolor="{COLORS[GROUP[g.op(n)]]}"];')
    lines += [f"  n{number[u]} -> n{number[v]};" for u, v in g.edges]
    return "\n".join(lines + ["}"]) + "\n"


def _png(g: Graph, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    pos, order = layout(g), g.topo_order()
    number = {n: i for i, n in enumerate(order)}
    width = max(x for x, _ in pos.values()) + BOX_W + GAP_X
    height = max(y for _, y in pos.values()) + BOX_H + GAP_Y
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    for u, v in g.edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        ax.annotate("", xy=(x2 + BOX_W / 2, y2), xytext=(x1 + BOX_W / 2, y1 + BOX_H),
                    arrowprops={"arrowstyle": "->", "color": "#555", "lw": 0.8})
    for n in order:
        x, y = pos[n]
        ax.add_patch(FancyBboxPatch((x, y), BOX_W, BOX_H, boxstyle="round,pad=0,rounding_size=4",
                                    fc=COLORS[GROUP[g.op(n)]], ec="#333", lw=0.8))
        top, detail = label(g, n, number[n])
        ax.text(x + 6, y + 13, top, fontsize=8, family="monospace")
        ax.text(x + 6, y + 27, detail, fontsize=7, family="monospace", color="#333")
    fig.savefig(path)
    plt.close(fig)


def draw(g: Graph, path, engine: str = "auto") -> Path:
    """Draw `g` to `path` (.svg, .png, or with engine="dot" any format `dot -T` knows)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if engine == "dot" or (engine == "auto" and fmt not in ("svg", "png")):
        if shutil.which("dot") is None:
            raise RuntimeError("Graphviz `dot` is not installed; draw to .svg or .png instead")
        subprocess.run(["dot", f"-T{fmt}", "-o", str(path)], input=to_dot(g), text=True,
                       check=True)
    elif fmt == "svg":
        path.write_text(to_svg(g))
    elif fmt == "png":
        _png(g, path)
    else:
        raise ValueError(f"cannot draw to {path.name}: use .svg or .png")
    return path


__all__ = ["draw", "layout", "nx", "to_dot", "to_svg"]
