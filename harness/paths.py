"""Where the repository's files are. A leaf module: every other module may import it."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "workflows" / "config"
SCHEMA_PATH = REPO_ROOT / "workflows" / "schema" / "config.schema.json"
REFERENCE_CSV = REPO_ROOT / "results" / "paper_reference.csv"
"""The paper's numbers (data, not code); tables join them."""
PARAMETER_REFERENCE_CSV = REPO_ROOT / "results" / "parameter_reference.csv"
"""Parameter counts from the paper (PAR's Table 1) and the baselines' sources, for Table 1."""
RESULTS_DIR = Path("results")
"""Tables and figures, relative to the workflow's working folder (see ScaleConfig.results_dir)."""
