"""The augmentation-letters table: kNN top-1 on CIFAR-10 for 1 to 5 augmentations.

Rows: augmentations a, ab, abc, abcd, abcde (a crop, b blur, c grayscale, d colour jitter,
e flip) x SimCLR / MoCo / Barlow Twins / SimSiam x without / with AMCL. Published: the base
repository's numbers without AMCL (ResNet-18, 800 epochs, mean +- std over 3 runs); the paper
gives no per-row numbers with AMCL here. Rows of methods not yet registered in
`amcl_jax.methods` are reported "method not available".

    # The README's table: SimCLR with and without AMCL at cpu scale, 2 seeds (20 runs):
    python -m amcl_jax.reproduce --table=configs/paper/augmentations.py --scale=cpu \
        --methods=simclr --data_dir=/data/cifar10-jpeg.tar.gz \
        --workdir=runs/paper_augmentations_cpu
    # The paper's protocol (40 rows x 3 seeds x 800 epochs; GPU):
    python -m amcl_jax.reproduce --table=configs/paper/augmentations.py --scale=full \
        --data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/paper_augmentations
    # Seconds, for a check that everything runs:
    python -m amcl_jax.reproduce --table=configs/paper/augmentations.py --scale=smoke \
        --methods=simclr --workdir=runs/paper_augmentations_smoke

Runtime: cpu scale about 5-10 minutes per run on 2 idle cores, so the README table (5 letters x
2 AMCL x 2 seeds = 20 runs) takes ~2.5-3.5 hours; interrupt and re-run the same command at
any time to continue. smoke: ~10-20 s per run. full: 78,200 steps per run (roughly 10-20 GPU
hours each).
"""

from amcl_jax.tables import Published, Row, Table

SOURCE = "base repository, kNN top-1, CIFAR-10, ResNet-18, 800 epochs, 3 runs"
LETTERS = ("a", "ab", "abc", "abcd", "abcde")
METHODS = ("simclr", "moco", "barlow_twins", "simsiam")
# Published (mean, std) without AMCL: spec, "Numbers the authors published".
BASE = {
    "simclr": {"abcde": (89.76, 0.12), "abcd": (88.48, 0.22), "abc": (83.50, 0.14),
               "ab": (63.23, 0.05), "a": (62.74, 0.18)},
    "barlow_twins": {"abcde": (86.91, 0.09), "abcd": (85.38, 0.37), "abc": (82.00, 0.59),
                     "ab": (67.83, 0.94), "a": (67.77, 0.69)},
    "moco": {"abcde": (90.12, 0.12), "abcd": (89.69, 0.11), "abc": (86.78, 0.07),
             "ab": (75.12, 0.28), "a": (74.94, 0.22)},
    "simsiam": {"abcde": (90.59, 0.11), "abcd": (89.34, 0.09), "abc": (85.38, 0.09),
                "ab": (63.27, 0.30), "a": (61.47, 0.74)},
}


def get_table() -> Table:
    rows = []
    for method in METHODS:
        for amcl in (False, True):
            for letters in LETTERS:
                published = None
                if not amcl:
                    mean, std = BASE[method][letters]
                    published = Published(mean, std, source=SOURCE)
                rows.append(Row(method=method, amcl=amcl,
                                overrides={"data.augmentations": letters}, published=published))
    return Table(
        name="augmentations",
        title="kNN top-1 (%) vs augmentation letters, with and without AMCL",
        rows=tuple(rows),
        seeds={"full": (0, 1, 2), "cpu": (0, 1), "smoke": (0,)},
        columns=("data.augmentations",),
        plot_x="data.augmentations",
        note="Augmentation letters: a crop, b blur, c grayscale, d colour jitter, e flip.",
    )
