"""Measure how engine settings change the cost of making, running and deleting instances.

    python bench/engine_settings.py

For each setting, instances of hello (WAT) and env (C) are made ahead (as the pool does),
then each is run once and deleted; the best of five batches is reported, in microseconds
per instance, on one thread.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import EngineSettings  # noqa: E402
from gateway.engine import Engine, Invocation  # noqa: E402

MODULES = [ROOT / "apps/hello/hello.wat", ROOT / "bench/out/env.wasm"]
SETTINGS = {
    "on-demand allocator": EngineSettings(pooling=False),
    "pooling, keep 0, CoW": EngineSettings(keep_resident=0),
    "pooling, keep 64K, CoW (default)": EngineSettings(),
    "pooling, keep 1M, CoW": EngineSettings(keep_resident=1 << 20),
    "pooling, keep 64K, no CoW": EngineSettings(copy_on_write=False),
    "pooling, keep 1M, no CoW": EngineSettings(keep_resident=1 << 20, copy_on_write=False),
}


def measure(settings: EngineSettings, module: Path, batch: int = 400) -> tuple[float, float]:
    engine = Engine(None, settings)
    program = engine.link(engine.load(module), module.name)
    make, run = [], []
    for _ in range(5):
        started = time.perf_counter()
        instances = [program.instantiate() for _ in range(batch)]
        make.append((time.perf_counter() - started) / batch)
        started = time.perf_counter()
        for instance in instances:
            instance.run("_start", Invocation(["x"], {"A": "b"}))
        run.append((time.perf_counter() - started) / batch)
    return min(make) * 1e6, min(run) * 1e6


def main() -> None:
    if not MODULES[1].exists():
        sys.exit("build the apps first: python bench/run.py builds bench/out/env.wasm")
    header = "".join(f" | {m.name} make | {m.name} run+delete" for m in MODULES)
    print(f"| setting{header} |")
    print("|---" * (1 + 2 * len(MODULES)) + "|")
    for name, settings in SETTINGS.items():
        cells = "".join(f" | {a:.1f} | {b:.1f}" for a, b in (measure(settings, m) for m in MODULES))
        print(f"| {name}{cells} |")


if __name__ == "__main__":
    main()
