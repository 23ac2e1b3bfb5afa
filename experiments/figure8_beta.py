"""Figure 8: every attack against DnC (STRIKE with ν = 1) as the non-IID level varies: Dirichlet
β ∈ {0.1, 0.2, 0.5, 0.7, 0.9} and an IID split (paper App. D.2, SPEC §8). Lower β = more non-IID;
the paper finds STRIKE's advantage shrinks as the data gets closer to IID.

  python -m experiments.figure8_beta                              # digits, 20 rounds, 2 seeds
  python -m experiments.figure8_beta --betas 0.1,0.5 --no-iid --seeds 1
  python -m experiments.figure8_beta --scale paper --dataset imagenet12 --data-dir /data/imagenet12

Outputs: experiments/results/figure8_beta_<dataset>.md / .json / .png.
"""

from __future__ import annotations

import sys

from strike_jax import report, studies, sweep

BETAS = (0.1, 0.2, 0.5, 0.7, 0.9)


def build_parser():
    p = sweep.make_parser(__file__, __doc__, paper_dataset="imagenet12")
    p.add_argument("--betas", type=sweep.parse_floats, default=BETAS,
                   help="Dirichlet concentrations (default: 0.1,0.2,0.5,0.7,0.9)")
    p.add_argument("--no-iid", dest="iid", action="store_false", help="skip the IID split")
    p.add_argument("--attacks", type=sweep.names_type("attack"), default=sweep.ATTACKS,
                   help=f"comma-separated (default: {','.join(sweep.ATTACKS)})")
    p.add_argument("--defence", "--defense", dest="defence", type=sweep.names_type("rule", single=True),
                   default="dnc", help="default: dnc (the paper)")
    p.add_argument("--nu", type=float, default=1.0, help="STRIKE's nu (default 1, the paper)")
    return p


def make(base, value):
    if value == "iid":
        return base.replace(partition="iid")
    return base.replace(partition="dirichlet", beta=float(value))


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    base = sweep.base_config(args)
    if base.partition == "natural":
        sweep.usage_error(args.script, f"{args.dataset} is split by writer; "
                          f"Figure 8 needs a Dirichlet-split data set.")
    values = list(args.betas) + (["iid"] if args.iid else [])
    return studies.vary_experiment(args, base, name="figure8_beta", figure="Figure 8", xlabel="Dirichlet β",
                                  values=values, make=make, label=lambda v: "IID" if v == "iid" else f"{v:g}",
                                  attacks=args.attacks, defence=args.defence, nu=args.nu,
                                  setting=report.describe(base, args, split="split varied"))


if __name__ == "__main__":
    sys.exit(main())
