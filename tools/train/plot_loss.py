#!/usr/bin/env python3
"""Plot a run's loss.csv (one panel per stage, log scale) to a PNG.

  python3 plot_loss.py runs/demo/loss.csv runs/demo/loss.png
"""

import csv
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    src, dst = argv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    with open(src) as f:
        for row in csv.DictReader(f):
            s = series.setdefault(row["stage"], {})
            for k in ("loss", "l1", "l2", "edge", "kl"):
                if row.get(k):
                    s.setdefault(k, ([], []))
                    s[k][0].append(int(row["step"]))
                    s[k][1].append(float(row[k]))
    if not series:
        print(f"plot_loss: {src} has no rows", file=sys.stderr)
        return 1
    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4), squeeze=False)
    for ax, (stage, s) in zip(axes[0], series.items()):
        for k, (x, y) in s.items():
            ax.plot(x, y, label=k, linewidth=1.0 if k == "loss" else 0.7)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{stage} stage")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    print(f"plot_loss: wrote {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
