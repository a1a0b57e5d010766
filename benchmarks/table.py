"""Markdown table of a ``numgru bench`` JSON file: ``python benchmarks/table.py numgru-bench.json``."""
import json
import sys

POINTS = [(128, 1, 64), (128, 1, 256), (128, 1, 1024), (128, 16, 256), (128, 64, 256), (128, 64, 1024)]


def ms(v):
    """Three significant digits, without an exponent from 1000 ms on (1.03e+03 → 1031)."""
    return f"{v:.3g}" if v < 999.5 else f"{v:.0f}"


def main(path, points=POINTS):
    data = json.load(open(path))
    peers = data["peers"]
    rows = {(r["threads"], r["T"], r["B"], r["H"]): r for r in data["rows"]}
    threads = sorted({r["threads"] for r in data["rows"]})
    frozen = any("numgru_frozen_ms" in r for r in data["rows"])  # numgru bench --frozen
    head = "| threads | T | B | H | numgru ms | GFLOP/s | " + " | ".join(
        f"{p} ms | × {p}" for p in peers) + " |"
    if frozen:
        head += " frozen ms | " + " | ".join(f"frozen × {p}" for p in peers) + " |"
    print(head)
    print("|" + "---|" * (6 + 2 * len(peers) + (1 + len(peers) if frozen else 0)))
    for th in threads:
        for (T, B, H) in points:
            r = rows.get((th, T, B, H))
            if r is None:
                continue
            cells = [str(th), str(T), str(B), str(H), ms(r['numgru_ms']), f"{r['numgru_gflops']:.0f}"]
            for p in peers:
                cells += ([ms(r[p + '_ms']), f"{r['speedup_vs_' + p]:.2f}"] if p + "_ms" in r
                          else ["n/a", "-"])
            if frozen:
                cells.append(ms(r['numgru_frozen_ms']))
                cells += [f"{r['frozen_speedup_vs_' + p]:.2f}" if f"frozen_speedup_vs_{p}" in r else "-"
                          for p in peers]
            print("| " + " | ".join(cells) + " |")
    print(f"\nCPU: {data['cpu']} ({data['cpu_count']} vCPUs); BLAS: {'; '.join(data['blas'])}; "
          f"env: {data['env'] or 'OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset'}"
          + (f"; AMX: {data['amx']}" if "amx" in data else ""))


if __name__ == "__main__":
    main(sys.argv[1])
