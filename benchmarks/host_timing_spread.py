"""Run-to-run spread of the host device's median latency.

Builds three models of different sizes (a tiny conv, a mid-size conv stack and a small
MobileNetV2), times each one ``--times`` times with the shipped ``host`` profile (each
time is a full repeat-until-stable measurement) and prints, per model, the mean, min and
max of the medians, the spread (max - min) / mean and the coefficient of variation, and,
for comparison, the mean and spread of the per-measurement minimum (which a process
sharing the pinned core inflates less than the median).

    .venv/bin/python benchmarks/host_timing_spread.py [--times 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def build_models(directory: Path) -> dict[str, Path]:
    from mnasfpn.model.export import convert_keras
    from mnasfpn.tfenv import load_tensorflow

    load_tensorflow()
    import keras

    layers = keras.layers
    tiny = keras.Sequential(
        [keras.Input((32, 32, 3)), layers.Conv2D(8, 3, padding="same", activation="relu")]
    )
    mid = keras.Sequential(
        [keras.Input((64, 64, 16))]
        + [layers.Conv2D(32, 3, padding="same", activation="relu") for _ in range(4)]
        + [layers.GlobalAveragePooling2D(), layers.Dense(10)]
    )
    mobilenet = keras.applications.MobileNetV2(
        input_shape=(128, 128, 3), alpha=0.35, weights=None, classes=10
    )
    out = {}
    for name, model in (("tiny_conv", tiny), ("conv_stack", mid), ("mobilenetv2_0.35", mobilenet)):
        path = directory / f"{name}.tflite"
        path.write_bytes(convert_keras(model))
        out[name] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=10, help="measurements per model")
    args = parser.parse_args()

    from mnasfpn.devices import open_device

    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp))
        with open_device("host") as dev:
            info = dev.info()
            p = dev.profile
            print(
                f"# {info.model}, core {info.core} of {info.cores}, {info.runtime} "
                f"{info.runtime_version}; profile host: warmup {p.warmup_runs}, "
                f"{p.num_runs} runs/round, {p.min_repeats}-{p.max_repeats} rounds, "
                f"tol {p.stability_tolerance:.0%}, xnnpack {p.use_xnnpack}"
            )
            rows = []
            for name, path in models.items():
                t0 = time.perf_counter()
                results = dev.time_models([path] * args.times)
                failed = [r.error for r in results if not r.ok]
                if failed:
                    raise SystemExit(f"{name}: timing failed: {failed[0]}")
                medians = [r.median_ms for r in results if r.median_ms is not None]
                mins = [r.min_ms for r in results if r.min_ms is not None]
                mean = statistics.fmean(medians)
                mean_min = statistics.fmean(mins)
                rows.append(
                    (
                        name,
                        f"{path.stat().st_size / 1024:.0f}",
                        f"{mean:.4f}",
                        f"{min(medians):.4f}",
                        f"{max(medians):.4f}",
                        f"{100 * (max(medians) - min(medians)) / mean:.1f}",
                        f"{100 * statistics.stdev(medians) / mean:.1f}",
                        f"{mean_min:.4f}",
                        f"{100 * (max(mins) - min(mins)) / mean_min:.1f}",
                        f"{sum(r.stable for r in results)}/{len(results)}",
                        f"{time.perf_counter() - t0:.1f}",
                    )
                )
    header = (
        "model",
        "KB",
        "mean_med_ms",
        "min_ms",
        "max_ms",
        "spread_%",
        "cv_%",
        "mean_min_ms",
        "min_spread_%",
        "stable",
        "s",
    )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


if __name__ == "__main__":
    main()
