"""Published checkpoints (IGEV-Stereo, RT-IGEV++): exact import, proven against the authors' code.

The oracle is the authors' own model code in ../shared/reference (skipped with the reason where it
is absent). Official weights cannot be downloaded here: ``oracle.official_state_dict`` gives a file
in exactly the published format (DataParallel's ``module.`` keys), with random values; every
BatchNorm also gets random running statistics, so that a dropped or swapped statistic shows.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from m2s_train.errors import ConfigError  # noqa: E402
from m2s_train.models import create_model, load_model  # noqa: E402
from m2s_train.models.published import ARCHITECTURES, map_state, read_published  # noqa: E402
from m2s_train.models.reference_oracle import load_oracle, reference_disparity, reference_network  # noqa: E402

# the authors' test iterations: IGEV-Stereo's demo and evaluation use 32, RT-IGEV++ 8
TEST_ITERS = {"igev": 32, "rt-igev": 8}


@pytest.fixture(scope="module")
def oracle():
    try:
        return load_oracle()
    except ConfigError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def references(oracle):
    return {name: reference_network(name, seed=3) for name in ARCHITECTURES}


@pytest.fixture(scope="module")
def aloe(opencv_data):
    import cv2

    def read(name):
        return cv2.cvtColor(cv2.imread(str(opencv_data / name)), cv2.COLOR_BGR2RGB)

    return read("aloeL.jpg"), read("aloeR.jpg")


def _pair(aloe, h, w):
    import cv2

    return [torch.from_numpy(cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None].float()
            for im in aloe]


def _imported(name, reference):
    arch = ARCHITECTURES[name]
    model = create_model(arch.model, **arch.overrides).eval()
    mapped = map_state(arch, reference.state_dict(), model.state_dict(), "reference")
    model.load_state_dict(mapped.state)
    return model, mapped


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("size", [(128, 160), (120, 150)], ids=["128x160", "120x150-padded"])
def test_imported_model_computes_what_the_authors_code_computes(name, size, references, aloe):
    """Real pair (Aloe), the published test iterations, one size a multiple of 32 and one padded by the
    authors' InputPadder: max |dd| <= 0.01 px, mean <= 0.001 px."""
    left, right = _pair(aloe, *size)
    ref = reference_disparity(name, references[name], left, right, TEST_ITERS[name])
    model, _ = _imported(name, references[name])
    with torch.no_grad():
        ours = model(left / 255, right / 255, iters=TEST_ITERS[name]).disparity
    assert ours.shape == ref.shape == (1, 1, *size)
    diff = (ours - ref).abs()
    assert diff.max().item() <= 0.01, f"max |dd| {diff.max().item():.2e} px"
    assert diff.mean().item() <= 0.001, f"mean |dd| {diff.mean().item():.2e} px"


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_published_tensor_is_used_and_every_target_filled(name, references, oracle):
    reference = references[name]
    arch = ARCHITECTURES[name]
    source = reference.state_dict()
    model, mapped = _imported(name, reference)
    # 100 % of the source: mapped, an equal duplicate, or dropped on purpose (the unused BatchNorm3d)
    assert len(mapped.used) + len(mapped.aliases) + len(mapped.dropped) == len(source)
    assert sorted(mapped.dropped) == sorted(k for k in source if k.startswith("cost_agg.conv1_up.bn."))
    # ... and the dropped module really is never applied: its parameters get no gradient
    assert all(not re.fullmatch(p, k) for k in mapped.used for p, _ in arch.dropped)
    # the reference's parameter count minus exactly that unused BatchNorm3d(8) (16 parameters)
    ours = sum(p.numel() for p in model.parameters())
    theirs = sum(p.numel() for p in reference.parameters())
    assert theirs - ours == 16
    # every target from exactly one source key, named in the authors' terms
    for key in model.state_dict():
        sources = {r.source_of(key) for r in arch.rules} - {None}
        assert len(sources) == 1 and sources <= set(source), (key, sources)
    # no target left at its initial value: a fresh model (other seed) differs in every tensor
    torch.manual_seed(123)
    fresh = create_model(arch.model, **arch.overrides).state_dict()
    same = [k for k, v in model.state_dict().items() if torch.equal(v, fresh[k])]
    assert not same, f"{len(same)} tensors still at their initial value, e.g. {same[:3]}"


def test_the_unused_batchnorm_gets_no_gradient(references, aloe):
    """The 16 parameters IGEV-Stereo has more than our igev: its forward never touches them."""
    import copy

    reference = copy.deepcopy(references["igev"]).train()
    left, right = _pair(aloe, 64, 96)
    init, preds = reference(left, right, iters=1)
    (init.mean() + preds[-1].mean()).backward()
    bn = reference.cost_agg.conv1_up.bn
    assert bn.weight.grad is None and bn.bias.grad is None
    assert reference.cost_agg.conv1_up.conv.weight.grad is not None


def test_initial_disparity_agrees(references, aloe):
    """The soft-argmin start of the refinement (before any iteration can amplify a difference): 1e-4 px."""
    reference = references["igev"]
    left, right = _pair(aloe, 96, 128)
    captured = {}  # the reference computes its initial disparity inside forward: take the classifier's output
    hook = reference.classifier.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    try:
        reference_disparity("igev", reference, left, right, 1)
    finally:
        hook.remove()
    prob = torch.softmax(captured["logits"].squeeze(1), 1)
    theirs = (prob * torch.arange(prob.shape[1]).view(1, -1, 1, 1)).sum(1, keepdim=True)
    model, _ = _imported("igev", reference)
    with torch.no_grad():
        ours = model.softargmin(model(left / 255, right / 255, iters=1).init_prob)
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def published_files(tmp_path_factory, references, oracle):
    """Files in exactly the published formats: DataParallel keys, and the layouts training scripts write."""
    root = tmp_path_factory.mktemp("published")
    files = {}
    for name, reference in references.items():
        official = oracle.official_state_dict(reference)
        files[name] = root / f"{name}" / "sceneflow.pth"
        files[name].parent.mkdir()
        torch.save(official, files[name])
    igev = oracle.official_state_dict(references["igev"])
    torch.save({"state_dict": igev, "epoch": 10}, root / "under_state_dict.pth")
    torch.save({"model": {k[len("module."):]: v for k, v in igev.items()}}, root / "under_model_bare.pth")
    torch.save({"state_dict": {"model._orig_mod." + k[len("module."):]: v for k, v in igev.items()}},
               root / "lightning_compiled.pth")
    torch.manual_seed(0)
    torch.save(oracle.official_state_dict(oracle.build("raft-stereo")), root / "raftstereo-sceneflow.pth")
    return root, files


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "m2s_train.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _one_error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_import_cli_writes_a_checkpoint_with_a_card(name, published_files, references, tmp_path):
    _, files = published_files
    out = tmp_path / name
    proc = _cli("import", files[name], "--arch", name, "--out", out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["source_tensors"] == len(references[name].state_dict())
    assert sorted(p.name for p in out.iterdir()) == [".m2s-output.json", "MODEL_CARD.md", "model.json", "model.safetensors",
                                                     "model_card.json"]
    manifest = json.loads((out / ".m2s-output.json").read_text())  # what a later --overwrite may replace: these only
    assert manifest["tool"] == "m2s-train import" and manifest["complete"] is True
    assert sorted(manifest["written"]) == ["MODEL_CARD.md", "model.json", "model.safetensors", "model_card.json"]
    card = json.loads((out / "model_card.json").read_text())
    import hashlib

    assert card["source"]["sha256"] == hashlib.sha256(files[name].read_bytes()).hexdigest()
    assert card["licence"] == "MIT" and "Gangwei" in card["attribution"]
    assert "Scene Flow" in card["trained_on"]  # from the published file name
    assert card["parameters"] == sum(p.numel() for p in references[name].parameters()) - 16
    assert card["max_disparity_px"] == 192 and card["iterations"]["test"] == TEST_ITERS[name]
    assert "derived" in card["confidence"]
    # a fresh process loads it like any checkpoint, with the authors' weights in place
    model = load_model(out)
    assert model.model_name == ARCHITECTURES[name].model and model.config.confidence_head is False
    official = read_published(files[name])
    mapped = map_state(ARCHITECTURES[name], official, model.state_dict(), "file")
    for key, value in model.state_dict().items():
        assert torch.equal(value, mapped.state[key]), key


def test_layouts_users_have_are_accepted(published_files, references):
    root, files = published_files
    expected = references["igev"].state_dict()
    for path in (files["igev"], root / "under_state_dict.pth", root / "under_model_bare.pth",
                 root / "lightning_compiled.pth"):
        state = read_published(path)
        assert set(state) == set(expected), path.name
        assert all(torch.equal(state[k], expected[k]) for k in expected), path.name


def test_card_records_what_the_user_says_it_was_trained_on(published_files, tmp_path):
    root, files = published_files
    renamed = tmp_path / "my_igev.pth"
    renamed.write_bytes(files["igev"].read_bytes())
    proc = _cli("import", renamed, "--arch", "igev", "--out", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    assert "not stated" in json.loads((tmp_path / "a" / "model_card.json").read_text())["trained_on"]
    proc = _cli("import", renamed, "--arch", "igev", "--out", tmp_path / "b", "--trained-on", "our warehouse, 20k pairs")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "b" / "model_card.json").read_text())["trained_on"] == "our warehouse, 20k pairs"


class TestBadInput:
    """Each: one ``error:`` line, exit 2, nothing written."""

    def _refused(self, tmp_path, path, arch="igev"):
        out = tmp_path / "out"
        line = _one_error_line(_cli("import", path, "--arch", arch, "--out", out))
        assert not out.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
        return line

    def test_raft_stereo_checkpoint_imported_as_igev(self, published_files, tmp_path):
        root, _ = published_files
        line = self._refused(tmp_path, root / "raftstereo-sceneflow.pth")
        assert "look like RAFT-Stereo" in line and "missing from it (first: " in line and "no place in the model" in line

    def test_rt_igev_checkpoint_imported_as_igev_names_the_right_arch(self, published_files, tmp_path):
        _, files = published_files
        line = self._refused(tmp_path, files["rt-igev"])
        assert "look like RT-IGEV++ (--arch rt-igev)" in line

    def test_truncated_file(self, published_files, tmp_path):
        _, files = published_files
        cut = tmp_path / "sceneflow.pth"
        data = files["igev"].read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        line = self._refused(tmp_path, cut)
        assert "truncated, damaged or not a PyTorch checkpoint" in line

    def test_pickle_that_holds_code_is_refused_and_never_run(self, published_files, tmp_path):
        _, files = published_files
        sentinel = tmp_path / "ran"
        evil = tmp_path / "evil.pth"
        state = torch.load(files["igev"], weights_only=True)
        state["payload"] = _Payload(str(sentinel))
        torch.save(state, evil)
        line = self._refused(tmp_path, evil)
        assert "refused to unpickle" in line and "system" in line
        assert not sentinel.exists()

    def test_missing_keys_are_named_as_the_file_names_them(self, published_files, tmp_path):
        _, files = published_files
        state = torch.load(files["igev"], weights_only=True)
        for key in [k for k in state if k.startswith("module.update_block.gru16.")]:
            del state[key]
        path = tmp_path / "missing.pth"
        torch.save(state, path)
        line = self._refused(tmp_path, path)
        assert "6 of the 745 tensors the model needs are missing" in line
        assert "update_block.gru16.convq.bias" in line  # the authors' key, not ours

    def test_edited_duplicate_is_caught(self, published_files, tmp_path):
        _, files = published_files
        state = torch.load(files["igev"], weights_only=True)
        state["module.cnet.layer2.0.norm3.weight"] = state["module.cnet.layer2.0.norm3.weight"] + 1
        path = tmp_path / "edited.pth"
        torch.save(state, path)
        assert "values differ" in self._refused(tmp_path, path)

    def test_out_that_holds_a_model(self, published_files, tmp_path):
        _, files = published_files
        out = tmp_path / "model"
        assert _cli("import", files["rt-igev"], "--arch", "rt-igev", "--out", out).returncode == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        line = _one_error_line(_cli("import", files["igev"], "--arch", "igev", "--out", out))
        assert "holds an earlier output of m2s-train import" in line and "--overwrite" in line
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        # asked: replaced, and only by a complete checkpoint
        assert _cli("import", files["igev"], "--arch", "igev", "--out", out, "--overwrite").returncode == 0
        assert load_model(out).model_name == "igev"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    def test_a_text_file_and_a_safetensors_file_named_pth(self, published_files, tmp_path):
        """A text file was a KeyError traceback; a safetensors file was refused as if it would run code."""
        text = tmp_path / "t.pth"
        text.write_text("hello\n")
        assert "is not a PyTorch checkpoint" in self._refused(tmp_path, text) and "b'hello" in self._refused(tmp_path, text)
        from safetensors.torch import save_file

        _, files = published_files
        state = torch.load(files["rt-igev"], weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.pth"))
        out = tmp_path / "imported"
        assert _cli("import", tmp_path / "weights.pth", "--arch", "rt-igev", "--out", out).returncode == 0
        assert load_model(out).model_name == "rt-igev"

    @pytest.mark.parametrize("damage", ["one NaN weight", "one inf", "all NaN", "all zero", "negative running_var",
                                        "int32 weights"])
    def test_weights_that_would_give_wrong_disparities_are_refused(self, published_files, tmp_path, damage):
        """Each imported with exit 0 before, and a NaN import then evaluated to 'EPE null, D1 1.0'."""
        from m2s_train.models.published import import_checkpoint

        _, files = published_files
        state = torch.load(files["rt-igev"], weights_only=True)
        floats = [k for k, v in state.items() if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))]
        first = floats[0]
        if damage == "one NaN weight":
            state[first].view(-1)[0] = float("nan")
        elif damage == "one inf":
            state[first].view(-1)[3] = float("inf")
        elif damage == "all NaN":
            state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
        elif damage == "all zero":
            state = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state.items()}
        elif damage == "negative running_var":
            key = next(k for k in state if k.endswith("running_var"))
            state[key] = -state[key].abs() - 1
        else:
            state = {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state.items()}
        path = tmp_path / "damaged.pth"
        torch.save(state, path)
        expected = {"one NaN weight": "non-finite value", "one inf": "non-finite value", "all NaN": "non-finite value",
                    "all zero": "every weight is zero", "negative running_var": "running variance",
                    "int32 weights": "are integers where the model has floating-point weights"}[damage]
        with pytest.raises(ConfigError, match=expected):
            import_checkpoint(path, "rt-igev", tmp_path / "out")
        assert not (tmp_path / "out").exists()
        if damage == "one NaN weight":  # the CLI: one error line; and a checkpoint edited after import is refused too
            assert expected in self._refused(tmp_path, path, arch="rt-igev")
            good = tmp_path / "good"
            import_checkpoint(files["rt-igev"], "rt-igev", good)
            from safetensors.torch import load_file, save_file

            weights = load_file(str(good / "model.safetensors"))
            weights[next(k for k, v in weights.items() if v.is_floating_point())].view(-1)[0] = float("nan")
            from safetensors import safe_open

            with safe_open(str(good / "model.safetensors"), framework="pt") as f:
                meta = f.metadata()
            save_file(weights, str(good / "model.safetensors"), metadata=meta)
            with pytest.raises(ConfigError, match="non-finite value"):
                load_model(good)

    def test_not_a_file_and_empty_file(self, tmp_path):
        assert "not found" in self._refused(tmp_path, tmp_path / "nope.pth")
        empty = tmp_path / "empty.pth"
        empty.write_bytes(b"")
        assert "empty" in self._refused(tmp_path, empty)


class _Payload:
    """A pickle that would run a command when unpickled without weights_only."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def test_rt_igev_registry_model_matches_the_reference_architecture(references):
    """rt-igev as trained here (learned confidence head aside) has the reference's structure."""
    model = create_model("rt-igev")
    assert model.config.valid_iters == 8 and model.config.hidden_dim == 96
    core = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("confidence_head."))
    assert core == sum(p.numel() for p in references["rt-igev"].parameters()) - 16
    left = torch.rand(1, 3, 64, 96)
    out = model.eval()(left, left)
    assert out.disparity.shape == out.confidence.shape == (1, 1, 64, 96)
    assert np.isfinite(out.disparity.detach().numpy()).all()


def test_imported_checkpoint_goes_through_training_and_evaluation(published_files, references, tmp_path, opencv_data,
                                                                   folder_dataset):
    """The paper's stage B from the authors' Scene Flow model: import, then finetune --init (S2DKD on sparse
    labels) and pretrain --init (stage A continued), then eval next to SGBM, each as a user types it.
    RT-IGEV++ (the lighter network) at a small crop, a couple of steps: the chain, not the accuracy."""
    _, files = published_files
    imported = tmp_path / "imported"
    assert _cli("import", files["rt-igev"], "--arch", "rt-igev", "--out", imported).returncode == 0
    root, teachers = folder_dataset(2, 128, (30, 90), shift=8)
    common = ["--steps", "2", "--batch-size", "1", "--crop", "64", "128", "--num-workers", "0", "--checkpoint-every", "1",
              "--quiet"]
    proc = _cli("finetune", "--init", imported, "--dataset", f"folder:{root}", "--sparsify", "lidar-like",
                "--depth-backend", "precomputed", "--depth-dir", teachers, "--teacher-cache", tmp_path / "cache",
                "--out", tmp_path / "ft", *common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ft = json.loads(proc.stdout)["checkpoint"]
    proc = _cli("pretrain", "--init", imported, "--dataset", f"folder:{root}", "--out", tmp_path / "pre", *common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for checkpoint in (ft, json.loads(proc.stdout)["checkpoint"]):
        model = load_model(checkpoint)
        # the imported model's own config (centred padding, zero border) with a learned confidence head added
        assert (model.model_name, model.config.pad_mode, model.config.confidence_head) == ("rt-igev", "centre", True)
        card = json.loads((Path(checkpoint) / "model_card.json").read_text())
        assert card["licence"] == "MIT" and card["source"]["file"] == "sceneflow.pth"
        assert card["training"]["init"] == str(imported) and card["training"]["steps"] == 2
        assert "then " in card["trained_on"] and "Scene Flow" in card["trained_on"]
    assert "fine-tuned" in json.loads((Path(ft) / "model_card.json").read_text())["trained_on"]
    proc = _cli("eval", "--checkpoint", imported, "--dataset", "aloe:quarter", "--sgbm", "--out", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert {"model", "sgbm"} <= set(rows[0]) and np.isfinite(rows[0]["model"]["epe"])
    # --model naming another model than the init's is refused, in one line
    line = _one_error_line(_cli("pretrain", "--init", imported, "--model", "igev-tiny", "--dataset", f"folder:{root}",
                                "--out", tmp_path / "bad", *common))
    assert "holds a 'rt-igev' model" in line
