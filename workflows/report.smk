# What a reader looks at: Table 1, each table's plots, PAR's Figs. 4-6 and the per-cell
# reproduction report, all from the rollout rows and the runs (never typed in). Each output is
# registered with Snakemake's report machinery: after a run,
#   snakemake --cores 1 --report report.html --config scale=<scale>
# bundles them, each with the caption of workflows/report/<name>.rst saying how it was made.
# table_rollouts and table_weights: workflows/common.smk


rule table1:
    """Parameters per module of every configured method at its paper preset (meta device)."""
    output:
        report(f"{RESULTS}/table1.csv", caption="report/table1.rst", category="Table 1"),
    params:
        harness=HARNESS,
        methods=" ".join(METHODS),
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/table1.log",
    benchmark:
        f"{OUT}/benchmarks/table1.tsv"
    shell:
        "{params.harness} table1 --methods {params.methods} --out {output} > {log} 2>&1"


rule plots:
    """A table's plots: success rates beside the paper's, outcomes, training curves."""
    input:
        rollouts=table_rollouts,
        weights=table_weights,
    output:
        success=report(f"{RESULTS}/figures/{{table}}_success.png", caption="report/success.rst",
                       category="{table}", subcategory="plots"),
        success_pdf=f"{RESULTS}/figures/{{table}}_success.pdf",
        outcomes=report(f"{RESULTS}/figures/{{table}}_outcomes.png", caption="report/outcomes.rst",
                        category="{table}", subcategory="plots"),
        outcomes_pdf=f"{RESULTS}/figures/{{table}}_outcomes.pdf",
        training=report(f"{RESULTS}/figures/{{table}}_training.png", caption="report/training.rst",
                        category="{table}", subcategory="plots"),
    params:
        harness=HARNESS,
        methods=lambda wildcards: " ".join(TABLE_METHODS[wildcards.table]),
        # each run's train_log.csv sits beside its weights (none for a method with nothing to train)
        logs=lambda wildcards, input: " ".join(
            f"{Path(w).parts[-3]}:{Path(w).parts[-2]}:{Path(w).parent / 'train_log.csv'}" for w in input.weights),
        out_dir=lambda wildcards, output: Path(output.success).parent,
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/plots/{{table}}.log",
    benchmark:
        f"{OUT}/benchmarks/plots/{{table}}.tsv"
    shell:
        "{params.harness} plots {input.rollouts} --table {wildcards.table} --methods {params.methods}"
        " --train-logs {params.logs} --out-dir {params.out_dir} > {log} 2>&1"


rule reproduction_report:
    """Per cell of Tables 2 and 3: k/n, interval, the paper's value and n, test, verdict, margin
    over chance, protocol differences (CSV and Markdown)."""
    input:
        unpack(lambda wildcards: {t: expand(f"{OUT}/eval/{{method}}/{{task}}.csv", method=TABLE_METHODS[t],
                                            task=TASKS) for t in TABLES}),
    output:
        csv=report(f"{RESULTS}/reproduction.csv", caption="report/reproduction.rst", category="Reproduction"),
        md=report(f"{RESULTS}/reproduction.md", caption="report/reproduction.rst", category="Reproduction"),
    params:
        harness=HARNESS,
        tables=lambda wildcards, input: " ".join(f"--table {t}={','.join(input[t])}" for t in TABLES),
        methods=" ".join(f"--methods {t}={','.join(TABLE_METHODS[t])}" for t in TABLES),
        title=f"Reproduction report ({SCALE} scale)",
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/reproduction_report.log",
    benchmark:
        f"{OUT}/benchmarks/reproduction_report.tsv"
    shell:
        "{params.harness} report {params.tables} {params.methods} --title '{params.title}'"
        " --out-csv {output.csv} --out-md {output.md} > {log} 2>&1"


rule fig4:
    """Paper Fig. 4 as the paper shows it: every task's predicted and executed frames."""
    input:
        expand(f"{RESULTS}/figures/fig4/{{task}}.npz", task=TASKS),
    output:
        report(f"{RESULTS}/figures/fig4.png", caption="report/fig4.rst", category="PAR's figures"),
    params:
        harness=HARNESS,
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/fig4.log",
    benchmark:
        f"{OUT}/benchmarks/fig4.tsv"
    shell:
        "{params.harness} fig4 {input} --out {output} > {log} 2>&1"


rule attention_map:
    """Paper Fig. 5: one PAR rollout's own attention (the protocol's first init state and seed)."""
    input:
        unpack(model_inputs),
        weights=f"{OUT}/runs/par/{{task}}/model.safetensors",
    output:
        figure=report(f"{RESULTS}/figures/fig5/{{task}}.png", caption="report/fig5.rst", category="PAR's figures"),
        maps=f"{RESULTS}/figures/fig5/{{task}}.npz",
        summary=f"{RESULTS}/figures/fig5/{{task}}.json",
    params:
        harness=HARNESS,
        config_args=CONFIG_ARGS,
        run_dir=lambda wildcards: f"{OUT}/runs/par/{wildcards.task}",
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/attention_map/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/attention_map/{{task}}.tsv"
    threads: 1
    resources:
        mem_mb=model_mem_mb(3000),
    shell:
        "{params.harness} attention-map {params.config_args} --run {params.run_dir}"
        " --task {wildcards.task} --out {output.figure} > {log} 2>&1"


rule failure_case:
    """Paper Fig. 6: PAR's first failed rollout in the protocol's order, played again."""
    input:
        unpack(model_inputs),
        weights=f"{OUT}/runs/par/{{task}}/model.safetensors",
        rollouts=f"{OUT}/eval/par/{{task}}.csv",
    output:
        figure=report(f"{RESULTS}/figures/fig6/{{task}}.png", caption="report/fig6.rst", category="PAR's figures"),
        summary=f"{RESULTS}/figures/fig6/{{task}}.json",
    params:
        harness=HARNESS,
        config_args=CONFIG_ARGS,
        run_dir=lambda wildcards: f"{OUT}/runs/par/{wildcards.task}",
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/failure_case/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/failure_case/{{task}}.tsv"
    threads: 1
    resources:
        mem_mb=model_mem_mb(3000),
    shell:
        "{params.harness} failure-case {params.config_args} --run {params.run_dir} --task {wildcards.task}"
        " --rollouts {input.rollouts} --out {output.figure} > {log} 2>&1"


# the paper shows Fig. 4 for every task and Figs. 5 and 6 for one: here its first task
PAR_FIGURES = (
    [f"{RESULTS}/figures/fig4.png", f"{RESULTS}/figures/fig5/{TASKS[0]}.png", f"{RESULTS}/figures/fig6/{TASKS[0]}.png"]
    if "par" in METHODS
    else []
)
READER = [
    f"{RESULTS}/table1.csv",
    f"{RESULTS}/reproduction.md",
    *expand(f"{RESULTS}/figures/{{table}}_{{plot}}.png", table=TABLES, plot=["success", "outcomes", "training"]),
    *PAR_FIGURES,
]
