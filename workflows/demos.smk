# Demonstrations: plan with ManiSkill's motion planner, render from states into datasets,
# and check the rendering against ManiSkill's own replay_trajectory.

DEMOS = CFG.demos
# Measured on a 2-core CPU: ~0.3-0.5 s planning and ~100 frames x 50-100 ms rendering per demo.
_DEMO_MINUTES = max(5, int(DEMOS["num_demos"] * 0.02) + 5)


rule plan_demos:
    output:
        trajectories=f"{OUT}/demos/{{task}}/trajectories.h5",
        trajectories_json=f"{OUT}/demos/{{task}}/trajectories.json",
        report=f"{OUT}/demos/{{task}}/plan_report.json",
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
        trajectories=rules.plan_demos.output.trajectories,
        report=rules.plan_demos.output.report,
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
        trajectories=rules.plan_demos.output.trajectories,
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


rule datasets:
    input:
        expand(f"{OUT}/datasets/{{task}}.h5", task=TASKS),
        expand(f"{OUT}/datasets/{{task}}.render_check.json", task=TASKS),
