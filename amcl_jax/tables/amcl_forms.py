"""The two forms of AMCL side by side with their baselines (abcde): the measurement behind the
default `amcl.form`. Not a table of the paper.

Rows: SimCLR (NT-Xent, tau 0.5); AMCL-SimCLR in the authors' form (Eq. 3 pair-score map, Eq. 5
top-k negatives, beta 1e-4, gradient clipping 1.0) and in the project's form (concatenated-pair
MLP per head, log-sum-exp negatives, beta 0.1: the default, chosen by this table, docs/amcl.md);
in the likelihood form (the project's with each temperature fit by its pair's Gaussian
likelihood alone, the contrast at fixed temperatures); MoCo (InfoNCE, tau 0.1) and AMCL-MoCo
in both forms (MoCo's recipe takes the authors' form); SimSiam and Barlow Twins, each with
AMCL in both forms; VICReg, which has no AMCL form, as a baseline.

    python -m amcl_jax.reproduce --table=configs/paper/amcl_forms.py --scale=cpu \
        --data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/amcl_forms_cpu
    python -m amcl_jax.reproduce --table=amcl_forms --scale=cpu_long \
        --rows=simclr-base,simclr-amcl-form=project \
        --data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/amcl_forms_cpu_long

Runtime: 14 rows x 3 seeds at cpu scale, about 5-15 minutes per run on 2 idle cores (~6 hours);
the command resumes where it stopped, so the table can be filled over several sittings.
"""

from amcl_jax.tables import Row, Table


def _method_rows(method: str, name: str, base: str, authors: str, project: str) -> tuple:
    """The method without AMCL (`base`), then AMCL in the authors' and the project's form."""
    return (Row(method=method, amcl=False, label=f"{name} ({base})"),
            Row(method=method, amcl=True, overrides={"amcl.form": "authors"},
                label=f"AMCL-{name}, authors' form ({authors})"),
            Row(method=method, amcl=True, overrides={"amcl.form": "project"},
                label=f"AMCL-{name}, project's form ({project})"))


def get_table() -> Table:
    rows = (
        *_method_rows("simclr", "SimCLR", "NT-Xent, tau 0.5", "top-k, pair score",
                      "log-sum-exp, [u; v] MLP"),
        Row(method="simclr", amcl=True, overrides={"amcl.form": "likelihood"},
            label="AMCL-SimCLR, likelihood form (temperatures fit by likelihood)"),
        *_method_rows("moco", "MoCo", "InfoNCE, tau 0.1", "both directions, top-k",
                      "log-sum-exp"),
        *_method_rows("simsiam", "SimSiam", "stop-gradient, predictor", "pair score",
                      "[u; v] MLP"),
        *_method_rows("barlow_twins", "Barlow Twins", "lambda 5e-3", "channel map",
                      "low-rank logits"),
        Row(method="vicreg", amcl=False, label="VICReg (25 / 25 / 1; no AMCL equation)"),
    )
    return Table(
        name="amcl_forms",
        title="kNN top-1 (%): AMCL's two forms against their baselines (abcde)",
        rows=rows,
        seeds={"full": (0, 1, 2), "cpu": (0, 1, 2), "cpu_long": (0, 1), "smoke": (0,)},
    )
