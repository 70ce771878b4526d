"""The number-of-heads ablation: AMCL-SimCLR with C = 1, 2, 3, 5 heads (augmentations abcde).

Plus the SimCLR baseline (one head, one global constant tau = 0.5). Published: only the poster's
two points, read off its plot (+-0.2): 1 head with a constant tau "at best" 57.6 and 3 adaptive
heads 61.9; the poster does not state the setting (dataset, epochs) of that plot, so these are
not comparable with the CIFAR-10 800-epoch numbers of the other tables.

    python -m amcl_jax.reproduce --table=configs/paper/heads.py --scale=cpu \
        --data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/paper_heads_cpu
    python -m amcl_jax.reproduce --table=configs/paper/heads.py --scale=full \
        --data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/paper_heads

Runtime: 5 rows x 2 seeds = 10 runs at cpu scale, about 5-10 minutes each on 2 idle cores
(~1.5 hours; 5 heads costs a little more than 1); full: 5 x 3 runs of 78,200 steps.
"""

from amcl_jax.tables import Published, Row, Table

POSTER = "paper poster (read off a plot, +-0.2; setting not stated)"


def get_table() -> Table:
    rows = [Row(method="simclr", amcl=False, overrides={"amcl.num_heads": 1},
                label="SimCLR, 1 head, constant tau 0.5",
                published=Published(57.6, approximate=True, source=POSTER,
                                     note="1 head, constant tau, at best"))]
    for heads in (1, 2, 3, 5):
        published = None
        if heads == 3:
            published = Published(61.9, approximate=True, source=POSTER, note="3 adaptive heads")
        rows.append(Row(method="simclr", amcl=True, overrides={"amcl.num_heads": heads},
                        label=f"AMCL, C = {heads}", published=published))
    return Table(
        name="heads",
        title="kNN top-1 (%) vs number of AMCL heads C (SimCLR, abcde)",
        rows=tuple(rows),
        seeds={"full": (0, 1, 2), "cpu": (0, 1), "smoke": (0,)},
        columns=("amcl.num_heads",),
        plot_x="amcl.num_heads",
    )
