# Training every configured method on every task, evaluating it under the protocol, and
# compiling Tables 2 and 3 (results/ for the paper scale, results/<scale>/ otherwise) from the
# per-rollout rows.

from harness.grid import CHANCE, table_methods
from harness.shards import init_state_blocks

METHODS = CFG.data["methods"]
TRAIN = CFG.data["training"]
EVAL = CFG.data["evaluation"]
# _GPU, FEATURES, FEATURE_METHOD, train_inputs and projected: workflows/common.smk


wildcard_constraints:
    fingerprint="[0-9a-f]{12}",


rule features:
    """Frames of a task's dataset through a method's frozen encoder, once (harness.features)."""
    input:
        dataset=f"{OUT}/datasets/{{task}}.h5",
        render_check=f"{OUT}/datasets/{{task}}.render_check.json",
    output:
        f"{OUT}/features/{{fingerprint}}/{{task}}.h5",
    params:
        harness=HARNESS,
        config_args=CONFIG_ARGS,
        method=lambda wildcards: FEATURE_METHOD[wildcards.fingerprint],
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/features/{{fingerprint}}/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/features/{{fingerprint}}/{{task}}.tsv"
    threads: TRAIN["threads"]
    resources:
        mem_mb=8000,
        runtime=60 * 12,
        gpu=_GPU,
    shell:
        "{params.harness} features {params.config_args} --method {params.method}"
        " --dataset {input.dataset} --out {output} --threads {threads} --no-progress > {log} 2>&1"


rule memory:
    """A method's projected peak training memory at its config's batch size (GPU scales: the
    training job asks for it)."""
    output:
        f"{OUT}/memory/{{method}}.json",
    params:
        harness=HARNESS,
        config_args=CONFIG_ARGS,
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/memory/{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/memory/{{method}}.tsv"
    threads: TRAIN["threads"]
    resources:
        mem_mb=32000,
        runtime=60,
        gpu=_GPU,
    shell:
        "{params.harness} memory {params.config_args} --method {wildcards.method} --out {output}"
        " --threads {threads} > {log} 2>&1"


rule train:
    input:
        unpack(train_inputs),
        dataset=f"{OUT}/datasets/{{task}}.h5",
        # nothing trains on frames whose rendering was not checked against ManiSkill's replay
        render_check=f"{OUT}/datasets/{{task}}.render_check.json",
    output:
        weights=f"{OUT}/runs/{{method}}/{{task}}/model.safetensors",
    params:
        harness=HARNESS,
        config_args=CONFIG_ARGS,
        run_dir=lambda wildcards: f"{OUT}/runs/{wildcards.method}/{wildcards.task}",
        features=lambda wildcards, input: f"--features {input.features}" if "features" in input.keys() else "",
        val=lambda wildcards, input: f"--val-dataset {input.val_dataset}" if "val_dataset" in input.keys() else "",
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/train/{{method}}/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/train/{{method}}/{{task}}.tsv"
    threads: TRAIN["threads"]
    resources:
        mem_mb=projected("mem_mb", 12000),
        gpu_mem_mb=projected("gpu_mem_mb", 0),
        runtime=60 * 24 * 3,
        gpu=train_gpu,
    shell:
        "{params.harness} train {params.config_args} --method {wildcards.method}"
        " --task {wildcards.task} --dataset {input.dataset} {params.features} {params.val} --out {params.run_dir}"
        " --threads {threads} --no-progress > {log} 2>&1"


# a (method, task)'s rollouts as one job, or (evaluation.init_states_per_job) as blocks of
# initial states gathered into the same file (harness/shards.py), or (evaluation.one_job_per_task)
# every method of a task in one job; a method that fails there fails its task's job
EVAL_BLOCKS = init_state_blocks(EVAL["num_init_states"], EVAL["init_states_per_job"])
if len(EVAL_BLOCKS) > 1:

    rule evaluate_block:
        """The rollouts of init states [start, stop) of the protocol: one job of a sharded evaluation."""
        input:
            unpack(model_inputs),
            weights=rules.train.output.weights,
        output:
            rollouts=f"{OUT}/eval/{{method}}/{{task}}/init_states_{{start}}_{{stop}}.csv",
        params:
            harness=HARNESS,
            config_args=CONFIG_ARGS,
            run_dir=lambda wildcards: f"{OUT}/runs/{wildcards.method}/{wildcards.task}",
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/evaluate/{{method}}/{{task}}/init_states_{{start}}_{{stop}}.log",
        benchmark:
            f"{OUT}/benchmarks/evaluate/{{method}}/{{task}}/init_states_{{start}}_{{stop}}.tsv"
        threads: EVAL["workers"]
        resources:
            mem_mb=model_mem_mb(3000),
            runtime=60 * 12,
        shell:
            "{params.harness} evaluate {params.config_args} --run {params.run_dir}"
            " --task {wildcards.task} --out {output.rollouts} --workers {threads}"
            " --init-states {wildcards.start} {wildcards.stop}"
            " --no-progress > {log} 2>&1"

    rule gather_rollouts:
        """The blocks of a sharded evaluation as the one rollout file an unsharded one writes."""
        input:
            lambda wildcards: expand(
                f"{OUT}/eval/{wildcards.method}/{wildcards.task}/init_states_{{b[0]}}_{{b[1]}}.csv", b=EVAL_BLOCKS
            ),
        output:
            rollouts=f"{OUT}/eval/{{method}}/{{task}}.csv",
        params:
            harness=HARNESS,
            config_args=CONFIG_ARGS,
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/gather_rollouts/{{method}}/{{task}}.log",
        benchmark:
            f"{OUT}/benchmarks/gather_rollouts/{{method}}/{{task}}.tsv"
        shell:
            "{params.harness} gather-rollouts {input} {params.config_args} --task {wildcards.task}"
            " --out {output.rollouts} > {log} 2>&1"

elif EVAL["one_job_per_task"]:

    rule evaluate_task:
        """Every method of a task evaluated by one process (evaluation.one_job_per_task): the
        task's env is built once and each run is loaded in turn; each run's rows go to the file
        its own evaluate job would write."""
        input:
            weights=lambda wildcards: expand(f"{OUT}/runs/{{method}}/{wildcards.task}/model.safetensors",
                                             method=METHODS),
        output:
            rollouts=expand(f"{OUT}/eval/{{method}}/{{{{task}}}}.csv", method=METHODS),
        params:
            harness=HARNESS,
            config_args=CONFIG_ARGS,
            run_dirs=lambda wildcards: " ".join(f"{OUT}/runs/{m}/{wildcards.task}" for m in METHODS),
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/evaluate/{{task}}.log",
        benchmark:
            f"{OUT}/benchmarks/evaluate_task/{{task}}.tsv"
        threads: EVAL["workers"]
        resources:
            mem_mb=lambda wildcards, threads: 3000 * threads,
            runtime=60 * 12,
        shell:
            "{params.harness} evaluate {params.config_args} --run {params.run_dirs}"
            " --task {wildcards.task} --out {output.rollouts} --workers {threads}"
            " --no-progress > {log} 2>&1"

else:

    rule evaluate:
        input:
            unpack(model_inputs),
            weights=rules.train.output.weights,
        output:
            rollouts=f"{OUT}/eval/{{method}}/{{task}}.csv",
        params:
            harness=HARNESS,
            config_args=CONFIG_ARGS,
            run_dir=lambda wildcards: f"{OUT}/runs/{wildcards.method}/{wildcards.task}",
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/evaluate/{{method}}/{{task}}.log",
        benchmark:
            f"{OUT}/benchmarks/evaluate/{{method}}/{{task}}.tsv"
        threads: EVAL["workers"]
        resources:
            mem_mb=model_mem_mb(3000),
            runtime=60 * 12,
        shell:
            "{params.harness} evaluate {params.config_args} --run {params.run_dir}"
            " --task {wildcards.task} --out {output.rollouts} --workers {threads}"
            " --no-progress > {log} 2>&1"


rule predicted_frames:
    """Paper Fig. 4 material: one PAR rollout (the protocol's first init state and policy
    seed), its predicted frames above the executed ones, the frames and their PSNR."""
    input:
        unpack(model_inputs),
        weights=f"{OUT}/runs/par/{{task}}/model.safetensors",
    output:
        figure=f"{RESULTS}/figures/fig4/{{task}}.png",
        frames=f"{RESULTS}/figures/fig4/{{task}}.npz",
        summary=f"{RESULTS}/figures/fig4/{{task}}.json",
    params:
        harness=HARNESS,
        config_args=CONFIG_ARGS,
        run_dir=lambda wildcards: f"{OUT}/runs/par/{wildcards.task}",
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/predicted_frames/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/predicted_frames/{{task}}.tsv"
    threads: 1
    resources:
        mem_mb=model_mem_mb(3000),
        runtime=60,
    shell:
        "{params.harness} predicted-frames {params.config_args} --run {params.run_dir}"
        " --task {wildcards.task} --out {output.figure} > {log} 2>&1"


FIGURES = expand(f"{RESULTS}/figures/fig4/{{task}}.png", task=TASKS) if "par" in METHODS else []


# Table 3 (ablation) rows, in the paper's order; Table 2 gets every other configured method.
# The chance level (random) is a row of every table, first (harness/grid.py, which a results
# grid shares). A table with nothing but the chance row is not made.
TABLE_METHODS = table_methods(METHODS)
TABLES = [name for name, rows in TABLE_METHODS.items() if set(rows) - set(CHANCE)]


wildcard_constraints:
    table="table2|table3",


rule table:
    input:
        lambda wildcards: expand(
            f"{OUT}/eval/{{method}}/{{task}}.csv",
            method=TABLE_METHODS[wildcards.table],
            task=TASKS,
        ),
    output:
        f"{RESULTS}/{{table}}.csv",
    params:
        harness=HARNESS,
        methods=lambda wildcards: " ".join(TABLE_METHODS[wildcards.table]),
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/{{table}}.log",
    benchmark:
        f"{OUT}/benchmarks/{{table}}.tsv"
    shell:
        "{params.harness} table {input} --table {wildcards.table} --methods {params.methods}"
        " --out {output} > {log} 2>&1"


rule other_scale_result:
    """Never runs: any results/ path of another scale fails while the DAG is built."""
    input:
        lambda wildcards: refuse_other_scale(wildcards.scale_dir, wildcards.what, CFG),
    output:
        "results/{scale_dir}{what}",
    wildcard_constraints:
        # any scale's folder but this one's ("" is the paper scale's); never a reserved name
        scale_dir=f"(?!(?:{'|'.join([SCALE, *RESERVED_SCALE_NAMES])})/)(?:[A-Za-z0-9_-]+/)?"
        if SCALE != "paper"
        else f"(?!(?:{'|'.join(RESERVED_SCALE_NAMES)})/)[A-Za-z0-9_-]+/",
        what=r"table[123]\.csv|reproduction\.(csv|md)|figures/[A-Za-z0-9_/]+\.(png|pdf|json|npz)",
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/other_scale_result/{{scale_dir}}{{what}}.log",
    shell:
        "false"
