"""Table 2: NNM in front of {Median, RFA, DnC} against {BitFlip, LIE, Mimic, STRIKE} (SPEC §8).

Nearest-neighbour mixing (Allouah et al. 2023; SPEC §7: each row replaced by the mean of its n - f
nearest rows, itself included) before the three most robust rules of Table 1. STRIKE's cell is its
lowest over the `nu` grid. The paper runs it on ImageNet-12.

  python -m experiments.table2_nnm                                # digits, 20 rounds, 2 seeds
  python -m experiments.table2_nnm --nu-grid 1.0 --seeds 1        # quick
  python -m experiments.table2_nnm --scale paper --dataset imagenet12 --data-dir /data/imagenet12

Outputs: experiments/results/table2_nnm_<dataset>.md / .json / .png.
"""

from __future__ import annotations

import sys

from strike_jax import report, studies, sweep

TABLE2_ATTACKS = ("bitflip", "lie", "mimic", "strike")
TABLE2_DEFENCES = ("median", "rfa", "dnc")


def build_parser():
    p = sweep.make_parser(__file__, __doc__, paper_dataset="imagenet12")
    p.add_argument("--attacks", type=sweep.names_type("attack"), default=TABLE2_ATTACKS,
                   help=f"comma-separated (default: {','.join(TABLE2_ATTACKS)})")
    p.add_argument("--defences", "--defenses", dest="defences", type=sweep.names_type("rule"),
                   default=TABLE2_DEFENCES, help=f"comma-separated (default: {','.join(TABLE2_DEFENCES)})")
    p.add_argument("--nu-grid", dest="nu_grid", type=sweep.parse_floats, default=sweep.NU_GRID,
                   help="STRIKE's nu values; its cell is the lowest (default: 0.25,...,2.0)")
    p.add_argument("--with-none", dest="with_none", action="store_true",
                   help="also run without attack (a reference row)")
    return p


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    base = sweep.base_config(args, preaggregation=("nnm",))
    return studies.attack_table(args, base, name="table2_nnm", what="Table 2 (NNM + rule)",
                               attacks=tuple(args.attacks) + (("none",) if args.with_none else ()),
                               defences=args.defences, nu_grid=args.nu_grid,
                               col_label=lambda d: "NNM + " + report.display(d))


if __name__ == "__main__":
    sys.exit(main())
