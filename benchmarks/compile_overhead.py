"""What ``Compile()`` costs over the same compiled model in a hand-written loop, and what compiling
gains over the plain model, for the notebook's MLP and a small convnet.

For each model, one epoch (train + validate, batch 64) of four runs, alternating, median of the
rounds after a warm-up epoch each (the warm-up pays the compilations):

* hand-written loop on the plain model, and on ``torch.compile(model, **kwargs)``;
* ``Learner.fit(1)`` (default plugins, progress bar off), and with ``Compile(**kwargs)``.

It prints the median epoch times and three ratios: Learner+Compile / hand loop on the same
compiled model (the Learner's overhead), Learner+Compile / plain Learner and compiled hand loop /
plain hand loop (what compiling gains). See ``training_loops.py`` for the jobs.

    python benchmarks/compile_overhead.py [--rounds 7] [--device cpu] [--backend inductor]
"""

from __future__ import annotations

import argparse

import torch
from training_loops import MODELS, hand_runner, learner, load_data, time_rounds

from pluglearn import Compile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_data()
    kwargs = {"backend": args.backend}
    print(
        f"one epoch = {len(data[0][0])} train + {len(data[1][0])} valid items, batch 64, "
        f"{data[2]}, {device}, torch.compile(backend={args.backend!r}), {args.rounds} rounds, "
        f"{args.threads} thread(s)"
    )
    print(
        f"{'model':<8} {'hand':>8} {'hand+comp':>10} {'Learner':>8} {'L+Compile':>10}   "
        f"{'L+C / hand+comp':>15} {'L+C / Learner':>13} {'hand+comp / hand':>16}"
    )
    for name, make in MODELS.items():
        torch.manual_seed(0)
        base = make()
        torch._dynamo.reset()
        plain_learner = learner(base, data[:2], device)
        compiled_learner = learner(base, data[:2], device, [Compile(**kwargs)])
        runs = {
            "hand": hand_runner(base, data[:2], device),
            "hand+comp": hand_runner(base, data[:2], device, compile_kwargs=kwargs),
            "Learner": lambda learn=plain_learner: learn.fit(1),
            "L+Compile": lambda learn=compiled_learner: learn.fit(1),
        }
        t = time_rounds(runs, args.rounds, device)
        print(
            f"{name:<8} {t['hand'] * 1e3:7.1f}ms {t['hand+comp'] * 1e3:9.1f}ms "
            f"{t['Learner'] * 1e3:7.1f}ms {t['L+Compile'] * 1e3:9.1f}ms   "
            f"{t['L+Compile'] / t['hand+comp']:15.3f} {t['L+Compile'] / t['Learner']:13.3f} "
            f"{t['hand+comp'] / t['hand']:16.3f}"
        )


if __name__ == "__main__":
    main()
