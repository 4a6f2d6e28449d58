# The par-harness workflow. Pick a scale with `--config scale=smoke|reduced|paper` (default
# paper); a custom file with `--config config_file=path.yaml`. Put targets BEFORE `--config`
# (it takes every word after it). Each scale writes its work below outputs/<scale>/ and its
# tables and figures to results/ (paper) or results/<scale>/ (any other), so scales never
# mix. Every rule calls `python -m harness ...`.
import sys

from harness.config import (RESERVED_SCALE_NAMES, ConfigError, check_profile_filled, load_workflow_config,
                            refuse_other_scale)
from harness.compute import device_report

try:
    CFG = load_workflow_config(config)
    check_profile_filled(workflow.resource_settings)  # a cluster profile's "<PARTITION>", before any job
except ConfigError as exc:
    sys.exit(f"error: {exc}")  # one readable line, not a traceback
SCALE = CFG.scale
OUT = str(CFG.output_root)
RESULTS = str(CFG.results_dir)
TASKS = CFG.tasks
# the interpreter running Snakemake (the project's .venv) also runs every step
PY = sys.executable
# compute.warm_start (smoke): each step is forked from a zygote that imported the heavy libraries
# once (harness/warm.py); otherwise its own `python -m harness` process
HARNESS = f"{PY} -m harness.warm" if CFG.data["compute"].get("warm_start") else f"{PY} -m harness"
CONFIG_ARGS = f"--config-file {config['config_file']}" if config.get("config_file") else f"--scale {SCALE}"

_fits, _device_message = device_report(CFG)
if not _fits:
    print(_device_message, file=sys.stderr)

wildcard_constraints:
    task="|".join(TASKS),
    method="|".join(CFG.data["methods"]) or "none",


include: "workflows/common.smk"
include: "workflows/demos.smk"
include: "workflows/methods.smk"
include: "workflows/report.smk"


report: "workflows/report/workflow.rst"


rule all:
    default_target: True
    input:
        rules.datasets.input,
        expand(f"{RESULTS}/{{table}}.csv", table=TABLES),
        FIGURES,
        READER,
