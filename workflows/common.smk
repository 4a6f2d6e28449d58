# Values and functions the rule files share (Snakemake's lint wants functions apart from rules).
import json
from pathlib import Path

# a GPU-wanting scale asks the scheduler for one per training job, sized by the method's
# projected training memory (rule memory)
_GPU = 1 if CFG.data["compute"]["wants_gpu"] else 0
# methods whose frames pass a frozen encoder (PAR: NOVA's VAE) train from a cache of its
# output, made once per task and encoder: {method: encoder fingerprint}
FEATURES = CFG.feature_fingerprints()
FEATURE_METHOD = {fp: m for m, fp in reversed(list(FEATURES.items()))}
# methods with nothing to train (random): their training job needs no GPU and no projection
UNTRAINED = CFG.untrained_methods()


def train_gpu(wildcards):
    return 0 if wildcards.method in UNTRAINED else _GPU


def train_inputs(wildcards):
    """A training job's inputs besides the dataset: the task's held-out demos (if the config
    asks for some and the method trains), its frame-feature cache, if its method has one, and on GPU scales its method's memory projection (which sizes the job)."""
    extra = {}
    if CFG.demos["num_val_demos"] and wildcards.method not in UNTRAINED:
        extra["val_dataset"] = f"{OUT}/datasets/{wildcards.task}.val.h5"
    if wildcards.method in FEATURES:
        extra["features"] = f"{OUT}/features/{FEATURES[wildcards.method]}/{wildcards.task}.h5"
    return extra | model_inputs(wildcards)


def projected(key, default):
    """A training job's resource from its method's memory projection (GPU scales), else
    ``default`` (CPU scales, and a dry run before the projection exists)."""

    def get(wildcards, input):
        path = getattr(input, "memory", None)
        if not path or not Path(path).exists():
            return default
        return json.loads(Path(path).read_text())["projections"][0]["resources"].get(key, default)

    return get


def model_inputs(wildcards):
    """A job's inputs that load a trained model besides its weights: on GPU scales, the method's
    memory projection, which sizes the job's host memory (``model_mem_mb``)."""
    method = getattr(wildcards, "method", "par")  # PAR's figures have no method wildcard
    if _GPU and method not in UNTRAINED:
        return {"memory": f"{OUT}/memory/{method}.json"}
    return {}


def model_mem_mb(per_worker):
    """The host memory of a job that loads a trained model: ``per_worker`` MB per rollout worker,
    and on GPU scales at least what the method's training job asks for the model as it loads it
    (the projection's ``mem_mb``: its parameters twice over and 4 GiB) and ``per_worker`` for each
    further worker. A paper-preset model (RDT-1B with SigLIP and T5-XXL, PAR with NOVA and Phi-2)
    is several GB before any rollout."""

    model = projected("mem_mb", None)

    def get(wildcards, input, threads):
        mem = model(wildcards, input)
        return per_worker * threads if mem is None else max(per_worker * threads, mem + per_worker * (threads - 1))

    return get


def table_rollouts(wildcards):
    """A table's rollout files: every row's method on every task (TABLE_METHODS: methods.smk)."""
    return expand(f"{OUT}/eval/{{method}}/{{task}}.csv", method=TABLE_METHODS[wildcards.table], task=TASKS)


def table_weights(wildcards):
    """A table's trained runs (their train_log.csv lies beside the weights)."""
    return expand(f"{OUT}/runs/{{method}}/{{task}}/model.safetensors", method=TABLE_METHODS[wildcards.table],
                  task=TASKS)
