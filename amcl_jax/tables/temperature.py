"""The temperature ablation: one global constant tau vs adaptive tau for positives, negatives,
or both (AMCL-SimCLR, 3 heads, augmentations abcde).

Rows:
  SimCLR baseline        1 head, NT-Xent, global constant tau 0.5
  AMCL, constant tau     3 heads, every pair at one constant tau
  AMCL, adaptive tau+    only the positive pair's temperature from the network
  AMCL, adaptive tau-    only the negatives' temperatures from the network
  AMCL, adaptive both    the paper's AMCL
The middle rows set `amcl.adaptive_temperature` ("positive", "negative", "none"); the
non-adaptive side uses the global constant `simclr.temperature` (0.5).

Published (poster, read off a plot, +-0.2): global constant tau 81.4, fully adaptive 83.7.

    python -m amcl_jax.reproduce --table=configs/paper/temperature.py --scale=cpu \
        --data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/paper_temperature_cpu

Runtime: 5 rows x 2 seeds at cpu scale, about 5-10 minutes per run on 2 idle cores (~1.5 hours).
"""

from amcl_jax.tables import Published, Row, Table

POSTER = "paper poster (read off a plot, +-0.2)"


def get_table() -> Table:
    rows = (
        Row(method="simclr", amcl=False, label="SimCLR: 1 head, global constant tau 0.5"),
        Row(method="simclr", amcl=True, overrides={"amcl.adaptive_temperature": "none"},
            label="AMCL: global constant tau",
            published=Published(81.4, approximate=True, source=POSTER)),
        Row(method="simclr", amcl=True, overrides={"amcl.adaptive_temperature": "positive"},
            label="AMCL: adaptive tau+ only"),
        Row(method="simclr", amcl=True, overrides={"amcl.adaptive_temperature": "negative"},
            label="AMCL: adaptive tau- only"),
        Row(method="simclr", amcl=True, label="AMCL: adaptive tau+ and tau- (paper)",
            published=Published(83.7, approximate=True, source=POSTER)),
    )
    return Table(
        name="temperature",
        title="kNN top-1 (%): global constant vs adaptive temperatures (SimCLR, abcde)",
        rows=rows,
        seeds={"full": (0, 1, 2), "cpu": (0, 1), "smoke": (0,)},
    )
