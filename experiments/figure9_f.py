"""Figure 9: every attack against DnC (STRIKE with ν = 1) as the number of Byzantine clients varies:
n = 50 clients, all taking part, f ∈ {5, 10, 15, 20} (f/n from 0.1 to 0.4; paper App. D.2, SPEC §8).
The Byzantine clients are the first f client ids (`byzantine_ratio = f / n`).

At local scale n is the preset's number of clients (20 for digits) and f defaults to
{0.1, 0.2, 0.3, 0.4} · n.

  python -m experiments.figure9_f                                 # digits: n=20, f in 2,4,6,8
  python -m experiments.figure9_f --n 20 --f 2,6 --seeds 1
  python -m experiments.figure9_f --scale paper --dataset imagenet12 --data-dir /data/imagenet12

Outputs: experiments/results/figure9_f_<dataset>.md / .json / .png.
"""

from __future__ import annotations

import sys

from strike_jax import studies, sweep

RATIOS = (0.1, 0.2, 0.3, 0.4)


def build_parser():
    p = sweep.make_parser(__file__, __doc__, paper_dataset="imagenet12")
    p.add_argument("--n", type=int, help="clients (all take part; default: 50 at paper scale, the preset's "
                                         "number at local scale)")
    p.add_argument("--f", dest="f_values", type=sweep.parse_ints,
                   help="Byzantine counts (default: 0.1n, 0.2n, 0.3n, 0.4n: 5,10,15,20 for n=50)")
    p.add_argument("--attacks", type=sweep.names_type("attack"), default=sweep.ATTACKS,
                   help=f"comma-separated (default: {','.join(sweep.ATTACKS)})")
    p.add_argument("--defence", "--defense", dest="defence", type=sweep.names_type("rule", single=True),
                   default="dnc", help="default: dnc (the paper)")
    p.add_argument("--nu", type=float, default=1.0, help="STRIKE's nu (default 1, the paper)")
    return p


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    base = sweep.base_config(args)
    if base.partition == "natural":
        sweep.usage_error(args.script, f"{args.dataset} is split by writer; "
                          f"Figure 9 needs a Dirichlet-split data set.")
    n = args.n or (50 if args.scale == "paper" else base.num_clients)
    f_values = args.f_values or tuple(int(round(r * n)) for r in RATIOS)
    bad = [f for f in f_values if not 0 < f < n]
    if bad:
        sweep.usage_error(args.script, f"--f {bad}: need 0 < f < n={n}")
    base = base.replace(num_clients=n, clients_per_round=n)

    def make(b, f):
        return b.replace(byzantine_ratio=f / n)

    return studies.vary_experiment(args, base, name="figure9_f", figure="Figure 9", xlabel=f"f (of n={n})",
                                  values=list(f_values), make=make, label=lambda f: str(f),
                                  attacks=args.attacks, defence=args.defence, nu=args.nu)


if __name__ == "__main__":
    sys.exit(main())
