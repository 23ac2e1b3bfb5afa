"""Table 1 (and Figure 4): seven attacks x seven defences, best test accuracy (SPEC §8).

Attacks {BitFlip, LIE, IPM, MinMax, MinSum, Mimic, STRIKE} against defences {Multi-Krum, Median,
RFA, Aksel, CClip, DnC, RBTM}. A cell is the mean ± std over seeds of each run's best test accuracy
over the rounds; STRIKE's cell is its lowest over the `nu` grid {0.25, ..., 2.0} (paper App. D.1).
With `--preagg bucketing` every defence gets bucketing (s = 2) in front: the paper's Figure 4
(ImageNet-12), drawn as grouped bars.

  python -m experiments.table1                                   # digits, 20 rounds, 2 seeds
  python -m experiments.table1 --nu-grid 1.0 --seeds 1 --results-dir /tmp/quick   # the quick version
  python -m experiments.table1 --preagg bucketing                # Figure 4, locally
  python -m experiments.table1 --scale paper --dataset imagenet12 --data-dir /data/imagenet12
  python -m experiments.table1 --attacks strike,gradient,opt_lie,opt_ipm --tag whitebox   # white-box rows

The white-box attacks (gradient, opt_lie, opt_ipm, agr_tailored) optimise against each run's real
defence (pre-aggregation and rule, with its state: `ctx.downstream`).

Outputs: experiments/results/table1_<dataset>[_bucketing][_<tag>].md / .json / .png.
"""

from __future__ import annotations

import argparse
import sys

from strike_jax import studies, sweep


def build_parser():
    p = sweep.make_parser(__file__, __doc__, paper_dataset="cifar10")
    p.add_argument("--attacks", type=sweep.names_type("attack"), default=sweep.ATTACKS,
                   help=f"comma-separated (default: {','.join(sweep.ATTACKS)})")
    p.add_argument("--defences", "--defenses", dest="defences", type=sweep.names_type("rule"),
                   default=sweep.DEFENCES, help=f"comma-separated (default: {','.join(sweep.DEFENCES)})")
    p.add_argument("--nu-grid", dest="nu_grid", type=sweep.parse_floats, default=sweep.NU_GRID,
                   help="STRIKE's nu values; its cell is the lowest (default: 0.25,0.5,...,2.0; "
                        "--nu-grid 1.0 is 8x cheaper)")
    p.add_argument("--preagg", choices=("none", "bucketing", "nnm", "nnm,bucketing"), default="none",
                   help="pre-aggregation in front of every defence (bucketing: the paper's Figure 4)")
    p.add_argument("--with-none", dest="with_none", action="store_true",
                   help="also run without attack (a reference row, not part of the paper's table)")
    p.add_argument("--tag", default="", type=_tag,
                   help="suffix of the result files (e.g. whitebox -> table1_digits_whitebox.md)")
    return p


def _tag(value: str) -> str:
    if value and not value.replace("_", "").replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(f"{value!r}: letters, digits, '-' and '_' only")
    return value


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    preagg = () if args.preagg == "none" else tuple(args.preagg.split(","))
    base = sweep.base_config(args, preaggregation=preagg)
    what = "Figure 4 (bucketing, s=2)" if preagg == ("bucketing",) else (
        f"Table 1 with {'+'.join(preagg)}" if preagg else "Table 1")
    return studies.attack_table(args, base, name="table1",
                               suffix="".join("_" + p for p in preagg) + (f"_{args.tag}" if args.tag else ""), what=what,
                               attacks=tuple(args.attacks) + (("none",) if args.with_none else ()),
                               defences=args.defences, nu_grid=args.nu_grid,
                               spec={"preaggregation": list(preagg)})


if __name__ == "__main__":
    sys.exit(main())
