"""scripts/standin_weights.py: the stand-in tokenizers load as the releases' do (transformers'
AutoTokenizer from the folder) and give ids inside the real vocabularies. The full-size files
are checked by the rehearsal (benchmarks/rehearsal.py), not here: they are gigabytes."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "standin_weights.py"


@pytest.fixture(scope="module")
def standin():
    spec = importlib.util.spec_from_file_location("standin_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_phi_tokenizer_stand_in_loads_and_stays_inside_phi_2s_vocabulary(standin, tmp_path):
    from transformers import AutoTokenizer

    standin._byte_level_tokenizer(standin.PHI_2["vocab_size"]).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for text in standin.INSTRUCTIONS:
        ids = tok(text).input_ids
        assert ids and max(ids) < standin.PHI_2["vocab_size"]
        assert tok.decode(ids) == text


def test_the_t5_tokenizer_stand_in_is_a_sentencepiece_model_that_loads_as_t5s(standin, tmp_path):
    """As google/t5-v1_1-xxl: spiece.model and no tokenizer.json; AutoTokenizer converts it
    (which needs the sentencepiece package, a dependency for that reason)."""
    from transformers import AutoTokenizer

    standin._sentencepiece_tokenizer(tmp_path)
    assert (tmp_path / "spiece.model").exists() and not (tmp_path / "tokenizer.json").exists()
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert type(tok).__name__ == "T5TokenizerFast" and (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    for text in standin.INSTRUCTIONS:
        ids = tok(text).input_ids
        assert ids[-1] == 1 and 2 not in ids and max(ids) < standin.T5_XXL["vocab_size"]
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_the_rehearsal_config_reads_every_stand_in_where_the_script_writes_it(standin):
    """Every weights file a paper preset reads (a field whose paper default lies under
    ``weights/``, or one of RDT's and ICRT's weight paths, None by default and set through
    method_overrides as the README says) is read from the stand-ins in the rehearsal; and every
    stand-in the script writes is read by some method."""
    from dataclasses import fields

    from harness.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(path=root / "workflows" / "config" / "rehearsal.yaml")
    overridden = {"rdt": ("pretrained", "vision_encoder", "text_encoder"), "icrt": ("vision_weights",)}
    read = set()
    for method in cfg.data["methods"]:
        _, _, preset = cfg.method(method)
        for f in fields(preset):
            value = getattr(preset, f.name)
            default = f.default if isinstance(f.default, str) else ""
            if default.startswith("weights/") or f.name in overridden.get(method, ()):
                assert isinstance(value, str) and value.startswith("weights-standin/"), (method, f.name, value)
                read.add(value)
    assert {"par", "act", "rdt", "icrt"} <= set(cfg.data["methods"])
    written = {f"weights-standin/{path}" for path in standin.LAYOUT.values()}
    assert {path for path in read if not any(path.startswith(w) for w in written)} == set()
    assert {w for w in written if not any(path.startswith(w) for path in read)} == set()


def test_the_resnet18_stand_in_is_torchvisions_file_and_acts_loader_reads_it(standin, tmp_path):
    import torch

    from harness.adapter import DataInfo, resolve_config
    from methods.act import ACTAdapter

    path = tmp_path / standin.LAYOUT["resnet18"]
    standin.write_resnet18(path, seed=0)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["fc.weight"].shape == (1000, 512) and state["conv1.weight"].shape == (64, 3, 7, 7)
    # ACT's own loader on the smoke preset's shapes with the stand-in's path: every backbone
    # tensor found (it raises on a missing one) and the values are the file's
    smoke = resolve_config(ACTAdapter, "smoke").replace(backbone_weights_path=str(path))
    adapter = ACTAdapter(smoke, DataInfo(8, 9, (32, 32), "push it"))
    assert torch.equal(adapter.policy.model.backbone.conv1.weight, state["conv1.weight"])
