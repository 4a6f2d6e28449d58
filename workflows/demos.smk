# Demonstrations: plan with ManiSkill's motion planner, render from states into datasets,
# and check the rendering against ManiSkill's own replay_trajectory. With demos.shard_size
# set, planning runs in seed ranges and rendering in episode blocks, each its own job, merged
# into the same plan and dataset files an unsharded build writes (harness/shards.py).
from harness.shards import plan_shard_ranges, render_shard_ranges

DEMOS = CFG.demos
# Measured on a 2-core CPU: ~0.3-0.5 s planning and ~100 frames x 50-100 ms rendering per demo.
_DEMO_MINUTES = max(5, int(DEMOS["num_demos"] * 0.02) + 5)


SHARD = DEMOS["shard_size"]
PLAN_TRAJECTORIES = f"{OUT}/demos/{{task}}/trajectories.h5"
PLAN_REPORT = f"{OUT}/demos/{{task}}/plan_report.json"


wildcard_constraints:
    start="[0-9]+",
    stop="[0-9]+",


if SHARD:
    PLAN_SHARDS = plan_shard_ranges(DEMOS["num_demos"], DEMOS["max_failed_seeds"], SHARD, DEMOS["seed_start"])
    RENDER_SHARDS = render_shard_ranges(DEMOS["num_demos"], SHARD)

    rule plan_shard:
        """Every seed of [start, stop), whatever the outcome: one planning job of a sharded plan."""
        output:
            trajectories=f"{OUT}/demos/{{task}}/shards/seeds_{{start}}_{{stop}}/trajectories.h5",
            trajectories_json=f"{OUT}/demos/{{task}}/shards/seeds_{{start}}_{{stop}}/trajectories.json",
            report=f"{OUT}/demos/{{task}}/shards/seeds_{{start}}_{{stop}}/plan_report.json",
        params:
            harness=HARNESS,
            config_args=CONFIG_ARGS,
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/plan_shard/{{task}}/seeds_{{start}}_{{stop}}.log",
        benchmark:
            f"{OUT}/benchmarks/plan_shard/{{task}}/seeds_{{start}}_{{stop}}.tsv"
        resources:
            mem_mb=3000,
            runtime=max(5, SHARD // 50 + 5),
        shell:
            "{params.harness} plan-demos {params.config_args} --task {wildcards.task}"
            " --seed-range {wildcards.start} {wildcards.stop} --out-dir $(dirname {output.trajectories})"
            " --no-progress > {log} 2>&1"

    rule merge_plans:
        """The first num_demos successful seeds of the shards: the unsharded plan's episodes."""
        input:
            lambda wildcards: expand(f"{OUT}/demos/{wildcards.task}/shards/seeds_{{r[0]}}_{{r[1]}}/plan_report.json",
                                     r=PLAN_SHARDS),
        output:
            trajectories=PLAN_TRAJECTORIES,
            trajectories_json=f"{OUT}/demos/{{task}}/trajectories.json",
            report=PLAN_REPORT,
        params:
            harness=HARNESS,
            config_args=CONFIG_ARGS,
            shards=lambda wildcards, input: " ".join(str(Path(p).parent) for p in input),
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/merge_plans/{{task}}.log",
        benchmark:
            f"{OUT}/benchmarks/merge_plans/{{task}}.tsv"
        shell:
            "{params.harness} merge-plans {params.config_args} --task {wildcards.task} --shards {params.shards}"
            " --out-dir $(dirname {output.trajectories}) > {log} 2>&1"

    rule render_shard:
        """The merged plan's episodes [start, stop) rendered: one block of a sharded dataset."""
        input:
            trajectories=PLAN_TRAJECTORIES,
            report=PLAN_REPORT,
        output:
            f"{OUT}/datasets/shards/{{task}}/episodes_{{start}}_{{stop}}.h5",
        params:
            harness=HARNESS,
            config_args=CONFIG_ARGS,
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/render_shard/{{task}}/episodes_{{start}}_{{stop}}.log",
        benchmark:
            f"{OUT}/benchmarks/render_shard/{{task}}/episodes_{{start}}_{{stop}}.tsv"
        threads: DEMOS["render_workers"]
        resources:
            mem_mb=lambda wildcards, threads: 2500 * threads,
            runtime=max(5, SHARD // 5 + 5),
        shell:
            "{params.harness} render-dataset {params.config_args} --task {wildcards.task}"
            " --trajectories {input.trajectories} --episodes {wildcards.start} {wildcards.stop}"
            " --out {output} --workers {threads} --no-progress > {log} 2>&1"

    rule merge_dataset:
        """The task's dataset from its rendered blocks, each verified first."""
        input:
            parts=lambda wildcards: expand(f"{OUT}/datasets/shards/{wildcards.task}/episodes_{{r[0]}}_{{r[1]}}.h5",
                                           r=RENDER_SHARDS),
            report=PLAN_REPORT,
        output:
            f"{OUT}/datasets/{{task}}.h5",
        params:
            harness=HARNESS,
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/merge_dataset/{{task}}.log",
        benchmark:
            f"{OUT}/benchmarks/merge_dataset/{{task}}.tsv"
        resources:
            mem_mb=16000,
        shell:
            "{params.harness} merge-datasets {input.parts} --plan-report {input.report} --out {output} > {log} 2>&1"

else:

    rule plan_demos:
        output:
            trajectories=PLAN_TRAJECTORIES,
            trajectories_json=f"{OUT}/demos/{{task}}/trajectories.json",
            report=PLAN_REPORT,
        params:
            harness=HARNESS,
            config_args=CONFIG_ARGS,
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/plan_demos/{{task}}.log",
        benchmark:
            f"{OUT}/benchmarks/plan_demos/{{task}}.tsv"
        resources:
            mem_mb=3000,
            runtime=_DEMO_MINUTES,
        shell:
            "{params.harness} plan-demos {params.config_args} --task {wildcards.task}"
            " --out-dir $(dirname {output.trajectories}) > {log} 2>&1"


    rule render_dataset:
        input:
            trajectories=PLAN_TRAJECTORIES,
            report=PLAN_REPORT,
        output:
            f"{OUT}/datasets/{{task}}.h5",
        params:
            harness=HARNESS,
            config_args=CONFIG_ARGS,
        conda:
            "envs/harness.yaml"
        log:
            f"{OUT}/logs/render_dataset/{{task}}.log",
        benchmark:
            f"{OUT}/benchmarks/render_dataset/{{task}}.tsv"
        threads: DEMOS["render_workers"]
        resources:
            mem_mb=lambda wildcards, threads: 2500 * threads,
            runtime=_DEMO_MINUTES * 10,
        shell:
            "{params.harness} render-dataset {params.config_args} --task {wildcards.task}"
            " --trajectories {input.trajectories} --out {output} --workers {threads} > {log} 2>&1"


rule verify_render:
    input:
        trajectories=PLAN_TRAJECTORIES,
    output:
        f"{OUT}/datasets/{{task}}.render_check.json",
    params:
        harness=HARNESS,
        config_args=CONFIG_ARGS,
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/verify_render/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/verify_render/{{task}}.tsv"
    resources:
        mem_mb=3000,
        runtime=15,
    shell:
        "{params.harness} verify-render {params.config_args} --task {wildcards.task}"
        " --trajectories {input.trajectories} --out {output} > {log} 2>&1"


rule val_dataset:
    """Held-out demos (demos.num_val_demos, seeds from the task's val_seed_start), never trained
    on: the offline probe's (`python -m harness probe`) and the training log's val_rmse."""
    output:
        f"{OUT}/datasets/{{task}}.val.h5",
    params:
        harness=HARNESS,
        config_args=CONFIG_ARGS,
        plan_dir=lambda wildcards: f"{OUT}/demos/{wildcards.task}/validation",
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/val_dataset/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/val_dataset/{{task}}.tsv"
    threads: DEMOS["render_workers"]
    resources:
        mem_mb=lambda wildcards, threads: 2500 * threads,
        runtime=_DEMO_MINUTES * 2,
    shell:
        "({params.harness} plan-demos {params.config_args} --task {wildcards.task} --split validation"
        " --out-dir {params.plan_dir} --no-progress && {params.harness} render-dataset {params.config_args}"
        " --task {wildcards.task} --trajectories {params.plan_dir}/trajectories.h5 --out {output}"
        " --workers {threads} --no-progress) > {log} 2>&1"


rule datasets:
    input:
        expand(f"{OUT}/datasets/{{task}}.h5", task=TASKS),
        expand(f"{OUT}/datasets/{{task}}.render_check.json", task=TASKS),


rule export_lerobot:
    """A task's dataset as a LeRobot v2.1 dataset, for LeRobot's own tools (not in the default
    target): `snakemake --cores 1 lerobot_datasets`."""
    input:
        f"{OUT}/datasets/{{task}}.h5",
    output:
        directory(f"{OUT}/lerobot/{{task}}"),
    params:
        harness=HARNESS,
    conda:
        "envs/harness.yaml"
    log:
        f"{OUT}/logs/export_lerobot/{{task}}.log",
    resources:
        mem_mb=3000,
        runtime=60,
    shell:
        "{params.harness} export-lerobot --dataset {input} --out {output} --no-progress > {log} 2>&1"


rule lerobot_datasets:
    input:
        expand(f"{OUT}/lerobot/{{task}}", task=TASKS),
