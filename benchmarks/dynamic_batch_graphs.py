"""Does ``--dynamic-batch`` compile once for every batch size, batch 1 included? Warms up the
streaming step at each size in turn (``FlashHeadModels.warm_up``, random weights at the released
shapes) after ``optimize(dynamic_batch=True)`` and prints, per size, one JSON line: seconds that size
took and the graphs Dynamo had compiled so far (``unique_graphs``). A second full compile shows as a
jump in both at the size that caused it: on one H100 (torch 2.11), Lite's DiT alone took 75.7 s at
batch 1 and 70.2 s more at batch 2 (graphs 2 -> 3), then 2.1 s at 3 and 4.8 s at 16
(docs/benchmarks.md, "Concurrent streams, part 5").

    python benchmarks/dynamic_batch_graphs.py --variant lite --device cuda --sizes 1 2 3 --no-fast-vae
    python benchmarks/dynamic_batch_graphs.py --variant tiny-lite --device cpu --sizes 1 2 3   # dry run

``--no-fast-vae`` leaves the VAE eager, so only the DiT compiles (a shorter cold compile);
``--cuda-graphs`` records each size as ``serve`` does. Set ``TORCH_LOGS=recompiles`` to see why a
size recompiled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="tiny-lite")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--fast-vae", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    args = p.parse_args(argv)

    import torch
    from _common import find_variant
    from torch._dynamo.utils import counters

    from vividhead.inference.pipeline import FlashHeadModels, default_dtype_for

    variant, toy = find_variant(args.variant)
    models = FlashHeadModels.random(variant, device=args.device, dtype=default_dtype_for(args.device),
                                    tiny_encoders=toy)
    applied = models.optimize(cuda_graphs=args.cuda_graphs, fast_vae=args.fast_vae, dynamic_batch=True)
    rows = []
    for b in args.sizes:
        t0 = time.perf_counter()
        models.warm_up(batch_sizes=(b,))
        row = {"batch": b, "seconds": round(time.perf_counter() - t0, 2),
               "graphs_so_far": int(counters["stats"]["unique_graphs"]), "optimize": applied,
               "variant": args.variant, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out is not None:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return rows


if __name__ == "__main__":
    main()
