"""python -m benchmarks [--device cpu|cuda] [--only NAME,...]: run, save JSON, update the doc."""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks import common

BENCHMARKS = ("engine", "packing", "covariance", "workflow", "data", "models", "host_memory", "startup", "resume")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--device", choices=sorted(common.SIZES), default="cpu",
                        help="cpu: small sizes (make bench); cuda: the issue's sizes (make bench-gpu)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")

    device = common.resolve(args.device)
    sizes = common.SIZES[args.device]
    import importlib

    start = time.perf_counter()
    result = {"machine": common.machine(device), "sizes": vars(sizes), "notes": list(sizes.notes), "benchmarks": {}}
    common.log(f"benchmarks on {device}: {', '.join(chosen)}")
    for name in chosen:
        module = importlib.import_module(f"benchmarks.{name}")
        began = time.perf_counter()
        result["benchmarks"][name] = module.run(device, sizes)
        common.log(f"{name}: {time.perf_counter() - began:.0f} s")
    result["seconds"] = time.perf_counter() - start
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    out = common.ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{device.type}.json"
    path.write_text(json.dumps(result, indent=1))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{device.type}-{stamp}.json").write_text(json.dumps(result, indent=1))
    common.log(f"results: {path}")
    if not args.no_doc:
        from benchmarks.report import update_document

        common.log(f"document: {update_document(result)}")
    common.log(f"total {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
