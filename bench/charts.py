"""Render bench/peers.py's JSON results as PNG bar charts (matplotlib).

    bench/.venv-peers/bin/python bench/charts.py RESULTS.json OUT_DIR

Prints the names of the files written, as JSON. Run by bench/peers.py.
"""

import json
import sys
from pathlib import Path

LABELS = {
    "kit": "kit (full, production)",
    "gevent": "bare Flask, gunicorn gevent",
    "flask-session": "Flask + Flask-Session, gevent",
    "uvicorn": "Quart, uvicorn+uvloop",
    "granian": "bare Flask, granian WSGI",
}


def charts(rows, cells, peers, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for key, title, file in (("rps", "requests per second (higher is better)", "peers-rps.png"),
                             ("p99", "p99 latency, ms (lower is better)", "peers-p99.png"),
                             ("cpu_us", "server CPU per request, us (lower is better)",
                              "peers-cpu.png")):
        fig, ax = plt.subplots(figsize=(11, 4.5))
        width = 0.8 / len(peers)
        for i, peer in enumerate(peers):
            values = []
            for route, conns in cells:
                match = [r for r in rows if (r["peer"], r["route"], r["conns"]) == (peer, route, conns)]
                values.append(match[0][key] if match else 0)
            ax.bar([x + i * width for x in range(len(cells))], values, width, label=LABELS[peer])
        ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(cells))])
        ax.set_xticklabels([f"/{route}\nc={conns}" for route, conns in cells])
        ax.set_title(title)
        if key == "p99":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / file, dpi=80)
        plt.close(fig)
        names.append(file)
    return names



if __name__ == "__main__":
    report = json.loads(Path(sys.argv[1]).read_text())
    cells = [tuple(cell) for cell in report["cells"]]
    print(json.dumps(charts(report["summary"], cells, report["peers"], Path(sys.argv[2]))))
