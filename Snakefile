# The par-harness workflow. Pick a scale with `--config scale=smoke|reduced|paper` (default
# paper); a custom file with `--config config_file=path.yaml`. Each scale writes only below
# outputs/<scale>/, so scales never mix. Every rule calls `python -m harness ...`.
import sys

from harness.config import load_config
from harness.compute import device_report

SCALE = config.get("scale", "paper")
CFG = load_config(SCALE, config.get("config_file"))
OUT = str(CFG.output_root)
TASKS = CFG.tasks
# the interpreter running Snakemake (the project's .venv) also runs every step
PY = sys.executable
HARNESS = f"{PY} -m harness"
CONFIG_ARGS = f"--scale {SCALE}" + (f" --config-file {config['config_file']}" if config.get("config_file") else "")

_fits, _device_message = device_report(CFG)
if not _fits:
    print(_device_message, file=sys.stderr)

wildcard_constraints:
    task="|".join(TASKS),
    method="|".join(CFG.data["methods"]) or "none",


include: "workflows/demos.smk"
include: "workflows/methods.smk"


rule all:
    default_target: True
    input:
        rules.datasets.input,
        expand("results/{table}.csv", table=TABLES),
        FIGURES,
