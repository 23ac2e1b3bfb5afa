"""Figure 10: every attack against DnC (STRIKE with ν = 1) as the number of clients varies:
n ∈ {10, 30, 50, 70, 90}, all taking part, f = 0.2 n (paper App. D.2, SPEC §8).

At local scale the default on digits is n ∈ {10, 20, 30, 40, 50} (1,438 training images: from about
70 clients on, the Dirichlet split (β = 0.5) cannot give every client its 10 samples for some
seeds); other data sets use the paper's grid. Pass --n to change it.

  python -m experiments.figure10_n                                # digits
  python -m experiments.figure10_n --n 10,20 --seeds 1
  python -m experiments.figure10_n --scale paper --dataset imagenet12 --data-dir /data/imagenet12

Outputs: experiments/results/figure10_n_<dataset>.md / .json / .png.
"""

from __future__ import annotations

import sys

from strike_jax import report, studies, sweep

PAPER_N = (10, 30, 50, 70, 90)
LOCAL_N = {"digits": (10, 20, 30, 40, 50)}


def build_parser():
    p = sweep.make_parser(__file__, __doc__, paper_dataset="imagenet12")
    p.add_argument("--n", dest="n_values", type=sweep.parse_ints,
                   help="client counts (default: 10,30,50,70,90; on digits 10,20,30,40,50)")
    p.add_argument("--ratio", type=float, default=0.2, help="Byzantine ratio f/n (default 0.2, the paper)")
    p.add_argument("--attacks", type=sweep.names_type("attack"), default=sweep.ATTACKS,
                   help=f"comma-separated (default: {','.join(sweep.ATTACKS)})")
    p.add_argument("--defence", "--defense", dest="defence", type=sweep.names_type("rule", single=True),
                   default="dnc", help="default: dnc (the paper)")
    p.add_argument("--nu", type=float, default=1.0, help="STRIKE's nu (default 1, the paper)")
    return p


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    base = sweep.base_config(args, byzantine_ratio=args.ratio)
    if base.partition == "natural":
        sweep.usage_error(args.script, f"{args.dataset} is split by writer; "
                          f"Figure 10 needs a Dirichlet-split data set.")
    n_values = args.n_values or (LOCAL_N.get(args.dataset, PAPER_N) if args.scale == "local" else PAPER_N)

    def make(b, n):
        return b.replace(num_clients=n, clients_per_round=n)

    return studies.vary_experiment(args, base, name="figure10_n", figure="Figure 10", xlabel="n (clients, f = 0.2n)",
                                  values=list(n_values), make=make, label=lambda n: str(n),
                                  attacks=args.attacks, defence=args.defence, nu=args.nu,
                                  setting=report.describe(base, args, clients="N = n clients (varied), all per round"))


if __name__ == "__main__":
    sys.exit(main())
