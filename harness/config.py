"""Loading and validating the per-scale workflow config (workflows/config/<scale>.yaml).

One JSON schema (workflows/schema/config.schema.json) is the single source of truth for what
a config may contain; unknown keys are errors, and every error names the offending key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.paths import CONFIG_DIR, REPO_ROOT, RESULTS_DIR, SCHEMA_PATH
from harness.protocol import Protocol
from harness.tasks import TaskSpec, get_task

DEFAULT_SCALE = "paper"
# The only keys `snakemake --config` takes; everything else belongs in a config file.
WORKFLOW_CONFIG_KEYS = {
    "scale": "which workflows/config/<scale>.yaml to use (default: paper)",
    "config_file": "a config file of your own, validated like the shipped ones",
}
# results/<name>/ is the table folder of scale <name>; these names are taken by what is
# committed there (the paper's numbers, measured runs) or by the paper scale's figures
RESERVED_SCALE_NAMES = ("figures", "measured")
# settings that split a step into cluster jobs (harness/shards.py) and are merged back exactly
SHARDING_KEYS = (("demos", "shard_size"), ("evaluation", "init_states_per_job"))
# settings that change no result: the sharding ones, whether a task's cells share one evaluation
# job (harness.evaluate.evaluate_runs; tests/test_pipeline_sim.py checks the rows), whether evaluating weights trained by
# other method code is refused or marked (harness/provenance.py), and how many held-out
# validation demos the probe and the training log read (training forks its random state
# around them, harness/train.py); left out of the config hash
UNHASHED_KEYS = (*SHARDING_KEYS, ("evaluation", "one_job_per_task"), ("evaluation", "require_same_code"),
                 ("demos", "num_val_demos"))


class ConfigError(HarnessError, ValueError):
    """A config that does not match the schema; the message names the key."""


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Validate ``cfg`` against the schema, fill in schema defaults, and return a new dict.

    Raises ConfigError naming the key (``demos.num_demos``) and the file it came from.
    """
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            if err.validator == "additionalProperties":
                known = sorted(err.schema.get("properties", {}))
                unknown = sorted(set(err.instance) - set(known))
                where = _key_path(err)
                for key in unknown:
                    full = key if where == "<top level>" else f"{where}.{key}"
                    lines.append(f"unknown key {full!r} (allowed here: {', '.join(known)})")
            else:
                lines.append(f"key {_key_path(err)!r}: {err.message}")
        raise ConfigError(f"invalid config {source}:\n  " + "\n  ".join(lines))
    return _with_defaults(copy.deepcopy(cfg), schema, schema)


def _with_defaults(node: Any, schema: dict, root: dict) -> Any:
    if "$ref" in schema:
        ref = schema["$ref"].removeprefix("#/")
        target = root
        for part in ref.split("/"):
            target = target[part]
        schema = target
    if isinstance(node, dict) and schema.get("type") == "object":
        for key, sub in schema.get("properties", {}).items():
            if key not in node and "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
            if key in node:
                node[key] = _with_defaults(node[key], sub, root)
    return node


def check_workflow_config(config: dict) -> None:
    """Refuse ``snakemake --config`` keys the workflow does not know (``scales=smoke`` would
    otherwise plan the paper scale without a word)."""
    unknown = sorted(set(config) - set(WORKFLOW_CONFIG_KEYS))
    if unknown:
        known = "; ".join(f"{k} ({why})" for k, why in WORKFLOW_CONFIG_KEYS.items())
        hint = (" (was the config file passed with snakemake's --configfile? use --config "
                "config_file=PATH)" if {"tasks", "methods", "demos"} & set(unknown) else "")
        raise ConfigError(f"unknown --config key(s) {', '.join(map(repr, unknown))}{hint}; "
                          f"known keys: {known}")


def load_workflow_config(config: dict) -> "ScaleConfig":
    """The config a Snakemake run asked for with ``--config scale=...`` or
    ``--config config_file=...``; unknown keys, unknown scales and a scale that contradicts
    the file's are ConfigErrors."""
    check_workflow_config(config)
    if "config_file" in config and config["config_file"] is None:  # `--config config_file=`
        raise ConfigError("--config config_file= is given no path: give the path of a YAML config, or drop it "
                          "for --config scale=<scale>")
    cfg = load_config(config.get("scale", DEFAULT_SCALE), config.get("config_file"))
    if config.get("config_file") and "scale" in config and str(config["scale"]) != cfg.scale:
        raise ConfigError(f"--config scale={config['scale']} contradicts {cfg.source} (scale: "
                          f"{cfg.scale}); a config file sets its own scale, so drop one of the two")
    return cfg


# the values a user fills into the SLURM profile (workflows/profiles/slurm/config.yaml), and where to find each
PROFILE_TEMPLATE_VALUES = {
    "<PARTITION>": "a CPU partition (`sinfo -s` lists them)",
    "<ACCOUNT>": "your account (`sacctmgr show assoc user=$USER format=account`)",
    "<GPU_PARTITION>": "the partition with GPUs (`sinfo -s`)",
}


def check_profile_filled(resource_settings) -> None:
    """Refuse a cluster profile whose resources still hold template values (``"<PARTITION>"``):
    a dry run would plan every job with them, and only ``sbatch`` would refuse, job by job.
    ``resource_settings``: Snakemake's (``workflow.resource_settings``), whose default and
    per-rule resources keep each value as written (``Resource.raw``)."""
    places = {"default-resources": resource_settings.default_resources or {},
              **{f"set-resources {rule}": values
                 for rule, values in (resource_settings.overwrite_resources or {}).items()}}
    unfilled = []
    for where, values in places.items():
        for name, value in values.items():
            raw = str(getattr(value, "raw", value)).strip().strip("'\"")
            if re.fullmatch(r"<[A-Z_]+>", raw):
                what = PROFILE_TEMPLATE_VALUES.get(raw, "its value")
                unfilled.append(f"{where}: {name} is {raw}, fill in {what}")
    if unfilled:
        raise ConfigError("the cluster profile still holds template values: " + "; ".join(unfilled) + ". Fill them "
                          "in the profile (workflows/profiles/slurm/config.yaml; README, On a cluster) before "
                          "submitting anything")


def refuse_other_scale(scale_dir: str, what: str, cfg: "ScaleConfig"):
    """Raise the error for a Snakemake target ``results/<scale_dir><what>`` that belongs to
    another scale than ``cfg``'s (``scale_dir`` is ``""`` for the paper scale, else
    ``<scale>/``): it names the scale the path belongs to and this scale's own path."""
    owner = scale_dir.rstrip("/") or "paper"
    target = f"{RESULTS_DIR}/{scale_dir}{what}"
    if owner == "paper":
        how = ""
    elif (CONFIG_DIR / f"{owner}.yaml").exists():
        how = f" --config scale={owner}"
    else:
        how = f" --config config_file=<the file that sets scale: {owner}>"
    raise ConfigError(f"{target} belongs to the {owner!r} scale, and this run is scale {cfg.scale!r}. "
                      f"Run `snakemake ... {target}{how}` for that scale, or ask this one for "
                      f"{cfg.results_dir / what}.")


def _check_methods(data: dict, source: str, names: bool = True) -> None:
    """Every name in ``methods:`` (when ``names``) and ``method_overrides:`` is a registered
    method or variant, and every overridden field exists in that method's config; checked
    when the config loads, not after hours of planning and rendering."""
    from harness.adapter import resolve_config
    from harness.registry import UnknownMethodError, get_method

    def lookup(name: str, where: str):
        try:
            return get_method(name)
        except UnknownMethodError as exc:
            raise ConfigError(f"config {source}: {where}: {exc}") from None

    for name in data["methods"] if names else []:
        lookup(name, "methods")
    for name, fields in (data.get("method_overrides") or {}).items():
        entry = lookup(name, "method_overrides")
        try:  # at the methods' own scale preset, as training resolves them
            resolve_config(entry.load(), data.get("method_scale") or data.get("scale"), entry.variant, fields)
        except (KeyError, ValueError) as exc:  # an unknown field of the method's config, or a bad value
            raise ConfigError(f"config {source}: method_overrides.{name}: {exc.args[0]}") from None


def load_config(scale: str = DEFAULT_SCALE, path: str | Path | None = None,
                check_methods: bool = True) -> "ScaleConfig":
    """Load the config of ``scale`` (or the file at ``path``) and validate it.

    ``method_overrides:`` is always checked against the method registry. ``check_methods``:
    check the ``methods:`` list too (imports every adapter module, ~2 s); the workflow and
    ``python -m harness config`` do, a single step (train, evaluate), which uses no list, need not."""
    if path is None:
        path = CONFIG_DIR / f"{scale}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
            raise ConfigError(f"unknown scale {scale!r}: no {path.relative_to(REPO_ROOT)}; known scales: {known}")
    if not str(path).strip():
        raise ConfigError("the config file given is an empty path (--config-file, or snakemake's --config "
                          "config_file=): give the path of a YAML config, or a scale instead (--scale, "
                          "--config scale=<scale>)")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} (--config-file, or snakemake's --config config_file=) "
                          f"{'is a folder' if path.is_dir() else 'does not exist'}; give the path of a YAML config "
                          f"(relative to {Path.cwd()}), e.g. a copy of {CONFIG_DIR.relative_to(REPO_ROOT)}/smoke.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of keys, got {type(raw).__name__}")
    data = validate_config(raw, source=str(path))
    if data["scale"] in RESERVED_SCALE_NAMES:
        raise ConfigError(f"config {path}: scale {data['scale']!r} is reserved (results/"
                          f"{data['scale']}/ holds other files); choose another name")
    _check_methods(data, str(path), names=check_methods)
    evaluation = data["evaluation"]
    if evaluation["one_job_per_task"] and evaluation["init_states_per_job"] is not None:
        raise ConfigError(f"config {path}: evaluation.one_job_per_task and evaluation.init_states_per_job both "
                          "split the evaluation into jobs, in opposite directions (every method of a task in one "
                          "job; a cell's initial states over several); set one of them")
    return ScaleConfig(data, source=str(path))


@dataclass(frozen=True)
class ScaleConfig:
    """A validated config with defaults filled in, plus helpers that resolve per-task settings."""

    data: dict
    source: str = "<memory>"

    @property
    def scale(self) -> str:
        return self.data["scale"]

    @property
    def tasks(self) -> list[str]:
        return list(self.data["tasks"])

    @property
    def demos(self) -> dict:
        return self.data["demos"]

    @property
    def method_scale(self) -> str:
        """The methods' scale preset to use (their ``scale_overrides`` key)."""
        return self.data.get("method_scale") or self.scale

    @property
    def output_root(self) -> Path:
        """Everything this scale produces lives below here, so scales never mix."""
        return Path("outputs") / self.scale

    @property
    def results_dir(self) -> Path:
        """Where this scale's tables and figures go: ``results/`` for the paper scale (the
        headline ``results/table2.csv``), ``results/<scale>/`` for every other, so a table of
        one scale is never mistaken for another's."""
        return RESULTS_DIR if self.scale == "paper" else RESULTS_DIR / self.scale

    def task(self, name: str) -> "ResolvedTask":
        """The task's registry defaults with this config's overrides applied."""
        spec = get_task(name)
        over = self.data.get("task_overrides", {}).get(spec.name, {})
        if "image_size" in over:
            image_size = tuple(over["image_size"])
        elif self.scale in spec.image_size:
            image_size = spec.image_size[self.scale]
        else:
            raise ConfigError(
                f"config {self.source}: scale {self.scale!r} has no default image size for "
                f"{spec.name}; set task_overrides.{spec.name}.image_size"
            )
        return ResolvedTask(
            spec=spec,
            image_size=image_size,
            camera=over.get("camera", spec.camera),
            control_mode=over.get("control_mode", spec.control_mode),
            max_episode_steps=over.get("max_episode_steps", spec.max_episode_steps),
        )

    def protocol(self, task_name: str):
        """The evaluation protocol for one task at this scale."""
        ev = self.data["evaluation"]
        cap = ev["max_episode_steps"] or self.task(task_name).max_episode_steps
        return Protocol(init_state_seed_start=ev["init_state_seed_start"],
                        num_init_states=ev["num_init_states"], policy_seeds=tuple(ev["policy_seeds"]),
                        max_episode_steps=cap, workers=ev["workers"], video_rollouts=ev["video_rollouts"])

    def method(self, name: str):
        """(registry entry, adapter class, the method's config at this scale with this
        config's ``method_overrides``)."""
        from harness.adapter import resolve_config
        from harness.registry import get_method

        entry = get_method(name)
        adapter_cls = entry.load()
        try:
            return entry, adapter_cls, resolve_config(adapter_cls, self.method_scale, entry.variant,
                                                      self.data.get("method_overrides", {}).get(entry.name))
        except (KeyError, ValueError) as exc:  # an unknown field in method_overrides, or a bad value
            raise ConfigError(f"config {self.source}: method_overrides.{entry.name}: {exc.args[0]}") from None

    def feature_fingerprints(self) -> dict[str, str]:
        """{method: fingerprint of its frame encoder} for the configured methods that train from
        cached frame features (``harness.features``); methods with equal ones share the cache."""
        out = {}
        for name in self.data["methods"]:
            _, adapter_cls, method_cfg = self.method(name)
            spec = adapter_cls.frame_features(method_cfg)
            if spec is not None:
                out[name] = spec.fingerprint
        return out

    def untrained_methods(self) -> set[str]:
        """The configured methods with nothing to train (``Adapter.trainable`` False: the chance
        level): no memory projection, no GPU."""
        return {name for name in self.data["methods"] if not self.method(name)[1].trainable}

    def config_hash(self) -> str:
        """Short hash of the resolved config; recorded next to every output. How work is split
        into jobs and whether other code's weights are refused (``UNHASHED_KEYS``) never
        change a result and are left out."""
        data = json.loads(json.dumps(self.data))
        for section, key in UNHASHED_KEYS:
            data.get(section, {}).pop(key, None)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class ResolvedTask:
    """A task with the settings one scale uses for it."""

    spec: TaskSpec
    image_size: tuple[int, int]
    camera: str
    control_mode: str
    max_episode_steps: int

    @property
    def name(self) -> str:
        return self.spec.name
