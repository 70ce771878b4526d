"""AMCL's open choices against SimCLR (augmentations abcde): not a table of the paper, the
investigation of where AMCL-SimCLR stands when it does not beat SimCLR at small scale.

Rows: SimCLR (NT-Xent, tau 0.5); AMCL-SimCLR with the defaults (log-sum-exp negatives, Omega's
K = head dimension, one temperature net per head); and one change at a time: the hard max of the
paper's table, Omega's K = 1 (a weaker regulariser pull towards tau -> 0), one temperature net
shared by the heads, and one head (C = 1).

    python -m amcl_jax.reproduce --table=configs/paper/amcl_choices.py --scale=cpu \
        --data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/amcl_choices_cpu

Runtime: 6 rows x 1 seed at cpu scale, about 5-10 minutes per run on 2 idle cores.
"""

from amcl_jax.tables import Row, Table


def get_table() -> Table:
    rows = (
        Row(method="simclr", amcl=False, label="SimCLR (NT-Xent, tau 0.5)"),
        Row(method="simclr", amcl=True, label="AMCL defaults (logsumexp, K = D, per-head net)"),
        Row(method="simclr", amcl=True, overrides={"amcl.negatives": "max"},
            label="AMCL, hard max negatives"),
        Row(method="simclr", amcl=True, overrides={"amcl.omega_dim": 1},
            label="AMCL, Omega K = 1"),
        Row(method="simclr", amcl=True, overrides={"amcl.shared_temperature_net": True},
            label="AMCL, shared temperature net"),
        Row(method="simclr", amcl=True, overrides={"amcl.num_heads": 1},
            label="AMCL, one head"),
    )
    return Table(
        name="amcl_choices",
        title="kNN top-1 (%): AMCL-SimCLR's open choices, one change at a time (abcde)",
        rows=rows,
        seeds={"full": (0, 1, 2), "cpu": (0,), "smoke": (0,)},
    )
