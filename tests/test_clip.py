"""CLIP fine-tuning (models/clip.py, models/adapters.py) on a randomly initialised tiny open_clip
CLIP: the text-initialised head, trainable parameters per mode, frozen weights under every
optimizer, zero-init adapters, reading OpenAI's TorchScript weights, the weights-missing line."""
import json
import os

import numpy as np
import open_clip
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import assert_one_line_error, run_cli
from core.errors import ConfigError, UserError
from engine.config import load_config, section
from losses import build_loss
from models import build_model
from models.adapters import AdaptFormer, lift_adapter_dim
import eval as eval_cli
import models.clip
import train as train_cli
from models.clip import (TINY_CLIP, ClipClassifier, build_open_clip, read_clip_state_dict, resolve_weights,
                         weights_activation)
from optim import build_optimizer

NAMES = ["airplane", "maple_tree", "sea turtle", "dog"]
COUNTS = [40, 12, 5, 2]


def tiny(finetune="lift", names=NAMES, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(section("model", name="clip_tiny", finetune=finetune, **kw), len(names), names)


def reference_clip(seed=0):
    """The tiny CLIP that `tiny(seed=...)` starts from (same seed, same construction)."""
    torch.manual_seed(seed)
    return build_open_clip(TINY_CLIP, None, True).eval()


@torch.no_grad()
def text_row(clip, prompt):
    """normalize(P t) for one prompt, through open_clip's own tokenizer and text tower."""
    t = F.normalize(clip.encode_text(open_clip.tokenize([prompt], context_length=clip.context_length))[0], dim=0)
    return F.normalize(clip.visual.proj @ t, dim=0)


def test_head_rows_are_the_text_embeddings_in_label_order():
    model = tiny()
    clip = reference_clip()
    # Underscores read as spaces; row k is class k's prompt, in the dataset's own order.
    prompts = ["a photo of a airplane.", "a photo of a maple tree.", "a photo of a sea turtle.", "a photo of a dog."]
    expected = torch.stack([text_row(clip, p) for p in prompts])
    assert model.classifier.weight.shape == (4, 32)
    assert torch.allclose(model.classifier.weight, expected, atol=1e-6)
    # Another label order permutes the rows with it (no re-sorting of classes by name).
    order = [2, 0, 3, 1]
    permuted = tiny(names=[NAMES[i] for i in order])
    assert torch.allclose(permuted.classifier.weight, expected[order], atol=1e-6)


def test_template_ensemble_averages_unit_text_embeddings():
    templates = ("a photo of a {}.", "a drawing of the {}")
    model = tiny(prompts=templates)
    clip = reference_clip()
    for k, name in enumerate(NAMES):
        texts = [t.format(name.replace("_", " ")) for t in templates]
        with torch.no_grad():
            emb = F.normalize(clip.encode_text(open_clip.tokenize(texts, context_length=16)), dim=1).mean(0)
        assert torch.allclose(model.classifier.weight[k], F.normalize(clip.visual.proj @ emb, dim=0), atol=1e-6)


def test_logits_are_the_scaled_cosine_of_the_features():
    model = tiny(cosine_scale=25.0).eval()
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        f = model.forward_features(x)
        logits = model(x)
    w = model.classifier.weight
    cos = torch.stack([torch.stack([torch.dot(fi, wk) / (fi.norm() * wk.norm()) for wk in w]) for fi in f])
    assert f.shape == (3, 32)                           # the encoder width: no CLIP projection
    assert torch.allclose(logits, 25.0 * cos, atol=1e-5)


def test_text_tower_is_dropped():
    keys = tiny().state_dict().keys()
    others = [k for k in keys if not k.startswith(("visual.", "classifier."))]
    assert others == ["quick_gelu"], others[:3]             # the one non-weight entry: the activation
    assert "visual.proj" not in keys


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_full_mode_trains_every_block_and_the_head():
    model = tiny("full")
    blocks = {n for n, _ in model.named_parameters() if n.startswith("visual.transformer.resblocks.")}
    assert trainable(model) == blocks | {"classifier.weight"}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"visual.class_embedding", "visual.positional_embedding", "visual.conv1.weight",
                      "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias"}


def test_lift_mode_trains_only_adapters_and_the_head():
    model = tiny("lift")
    names = trainable(model)
    assert names - {"classifier.weight"} == {f"visual.transformer.resblocks.{i}.mlp.adapter.{p}"
                                             for i in range(2) for p in ("scale", "norm.weight", "norm.bias",
                                             "down.weight", "down.bias", "up.weight", "up.bias")}
    # LIFT's width for 4 classes and 2 blocks: 2^max(0, floor(log2(4 / 4))) = 1; per block
    # D*r + r (down) + r*D + D (up) + 2D (norm) + 1 (scale) with D = 32, plus the head C*D.
    r, d = 1, 32
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (2 * d * r + r + 3 * d + 1) + 4 * d


@pytest.mark.parametrize("classes, width", [(10, 1), (100, 4), (1000, 32), (8142, 256), (24, 1), (48, 2)])
def test_lift_adapter_width_rule_for_vit_b16(classes, width):
    assert lift_adapter_dim(classes, 12) == width       # 2^max(0, floor(log2(C / 24)))


def test_vit_b16_architecture_and_trainable_sizes():
    """The real ViT-B/16 (on the meta device: shapes only, no memory, no weights)."""
    with torch.device("meta"):
        clip = build_open_clip(None, None, True)
        blocks = clip.visual.transformer.resblocks
        assert len(blocks) == 12 and clip.visual.conv1.weight.shape == (768, 3, 16, 16)
        assert clip.visual.proj.shape == (768, 512) and clip.text_projection.shape == (512, 512)
        assert all(isinstance(b.mlp.gelu, open_clip.transformer.QuickGELU) for b in blocks)   # OpenAI's activation
        lift = ClipClassifier(clip.visual, torch.empty(1000, 768), 25.0, "lift")
        n = sum(p.numel() for p in lift.parameters() if p.requires_grad)
        assert n == 12 * (2 * 768 * 32 + 32 + 3 * 768 + 1) + 1000 * 768      # adapters r = 32 + head
    with torch.device("meta"):
        full = ClipClassifier(build_open_clip(None, None, True).visual, torch.empty(1000, 768), 25.0, "full")
        n = sum(p.numel() for p in full.parameters() if p.requires_grad)
        assert n == 12 * (12 * 768 * 768 + 13 * 768) + 1000 * 768          # 12 blocks + head


OPTIMS = {"sgd": {}, "sam": {"rho": 0.05}, "imbsam": {"rho": 0.05, "eta": 10},
          "focal_sam": {"rho": 0.05, "gamma": 1.5, "lam": 0.7}, "cc_sam": {"rho": 0.05, "radius": "plain"}}


@pytest.mark.parametrize("finetune", ["full", "lift"])
@pytest.mark.parametrize("optim", list(OPTIMS))
def test_a_step_leaves_frozen_weights_bit_identical(finetune, optim):
    model = tiny(finetune)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(section("optim", name=optim, lr=0.01, momentum=0.9, weight_decay=5e-4, **OPTIMS[optim]),
                          model.parameters(), COUNTS)
    criterion = build_loss(section("loss", name="la"), COUNTS)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 224, 224, generator=g), torch.tensor([0, 1, 2, 3])
    loss, logits = opt.step(model, x, y, criterion)
    assert torch.isfinite(loss) and logits.shape == (4, 4)
    for n, p in model.named_parameters():
        if p.requires_grad:
            continue
        assert torch.equal(p.detach(), before[n]), f"frozen {n} moved"
    assert not torch.equal(model.classifier.weight.detach(), before["classifier.weight"])
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    if finetune == "full":
        assert any(n.startswith("visual.transformer.") for n in moved)
    else:
        assert any(".adapter.up." in n for n in moved)   # the zero-init branch starts to learn


def test_zero_init_adapters_give_the_backbone_output_exactly():
    lift, full = tiny("lift").eval(), tiny("full").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(lift.forward_features(x), full.forward_features(x))
        clip = reference_clip()
        clip.visual.proj = None
        assert torch.equal(full.forward_features(x), clip.visual(x))


def test_adapter_branch_is_parallel_to_the_mlp():
    """One adapted block with non-zero adapter weights, against the AdaptFormer formula by hand:
    y = x + attn; out = y + MLP(LN_2(y)) + s * (ReLU(LN_a(y) Wd^T + bd) Wu^T + bu)."""
    model = tiny("lift").eval()
    block = model.visual.transformer.resblocks[0]
    a = block.mlp.adapter
    with torch.no_grad():
        for p in (a.up.weight, a.up.bias, a.norm.weight, a.norm.bias):
            p.copy_(torch.randn_like(p))
        a.scale.fill_(0.7)
        x = torch.randn(2, 50, 32)
        y = x + block.attention(block.ln_1(x))
        ln2 = block.mlp.norm
        mlp = block.mlp.mlp
        hidden = mlp.c_fc(F.layer_norm(y, (32,), ln2.weight, ln2.bias, ln2.eps))
        mlp_out = mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden))                # QuickGELU
        z = F.layer_norm(y, (32,), a.norm.weight, a.norm.bias, a.norm.eps)
        branch = 0.7 * (torch.relu(z @ a.down.weight.t() + a.down.bias) @ a.up.weight.t() + a.up.bias)
        assert torch.allclose(block(x), y + mlp_out + branch, atol=1e-5)
    assert isinstance(a, AdaptFormer)


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.adapter_dim"):
        tiny("full", adapter_dim=8)
    with pytest.raises(ConfigError, match="model.prompts"):
        tiny(prompts=("a photo",))
    with pytest.raises(ConfigError, match="model.classifier"):
        tiny(classifier="cosine")
    with pytest.raises(UserError, match="class names"):
        build_model(section("model", name="clip_tiny"), 4, None)
    weights = tmp_path / "ViT-B-16.pt"
    weights.write_bytes(b"")                          # present; refused before it is read
    with pytest.raises(UserError, match="data.class_names"):   # ViT-B/16 refuses placeholder names
        build_model(section("model", name="clip_vit_b16", clip_weights=str(weights)), 3, ["class_0", "class_1", "class_2"])


@pytest.mark.parametrize("config", ["configs/clip/cifar100_lt/lift_focal_sam.yaml", "configs/clip/imagenet_lt/fft_sgd.yaml"])
def test_clip_with_the_standard_preprocessing_is_refused_at_load(config):
    """32-pixel CIFAR inputs break ViT-B/16's position embedding; ImageNet statistics would train
    silently on the wrong normalisation: both are one config error before anything is built."""
    from conftest import ROOT
    with pytest.raises(ConfigError, match=r"data.preprocess: model 'clip_vit_b16' needs data.preprocess: clip"):
        load_config(os.path.join(ROOT, config), ["data.preprocess=standard"])


# ----------------------------------------------------------------------------- weights

class _Holder(nn.Module):
    """A module with CLIP's parameter names at its root, to trace into a TorchScript archive like
    OpenAI's ViT-B-16.pt (which also carries three integer entries)."""

    def __init__(self, clip):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, p in clip.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, value in (("input_resolution", 224), ("context_length", 16), ("vocab_size", 49408)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, x):
        return x * 2


@pytest.mark.filterwarnings("ignore::FutureWarning")   # torch.jit is deprecated; OpenAI ships TorchScript
def test_reads_openai_style_torchscript_archive_and_plain_state_dicts(tmp_path):
    torch.manual_seed(3)
    source = build_open_clip(TINY_CLIP, None, True)
    archive = tmp_path / "ViT-B-16.pt"
    torch.jit.trace(_Holder(source), torch.ones(1)).save(str(archive))
    plain = tmp_path / "open_clip.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, plain)
    assert weights_activation(str(archive)) == "quick_gelu"          # OpenAI's CLIP
    for path in (archive, plain):
        state = read_clip_state_dict(str(path))
        assert set(state) == set(source.state_dict())
        torch.manual_seed(4)                              # another random start: the weights must win
        loaded = build_open_clip(TINY_CLIP, str(path), True)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))


def test_wrong_weights_file_is_one_line(tmp_path):
    bad = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(UserError, match="does not hold CLIP ViT-B/16 weights"):
        build_open_clip(TINY_CLIP, str(bad), True)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read CLIP weights"):
        read_clip_state_dict(str(junk))


def test_missing_weights_download_then_place_by_hand(tmp_path):
    target = tmp_path / "cache" / "ViT-B-16.pt"
    def offline(path):
        raise OSError("network unreachable")
    with pytest.raises(UserError) as e:
        resolve_weights(str(target), download=True, fetch=offline)
    msg = str(e.value)
    assert "\n" not in msg and str(target) in msg and "the download failed: OSError" in msg
    assert "openaipublic" in msg and "ViT-B-16.pt" in msg and "model.clip_weights" in msg
    fetched = []
    def fake_fetch(path):
        fetched.append(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
    assert resolve_weights(str(target), download=True, fetch=fake_fetch) == str(target)
    assert fetched == [str(target)]
    assert resolve_weights(str(target), download=False) == str(target)   # present: read, no download


def test_weights_missing_is_one_error_line_from_train_py(tmp_path):
    missing = tmp_path / "nowhere" / "ViT-B-16.pt"
    cfg = tmp_path / "clip.yaml"
    cfg.write_text(
        "data: {name: synthetic, num_classes: 3, image_size: 8, max_per_class: 4, imb_factor: 4, test_per_class: 1, "
        "num_workers: 0, preprocess: clip}\n"
        f"model: {{name: clip_vit_b16, clip_weights: {missing}, clip_download: false}}\n"
        "loss: {name: la}\noptim: {name: sgd, lr: 0.01}\ntrain: {epochs: 1, batch_size: 2}\n")
    proc = run_cli("train.py", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, f"CLIP ViT-B/16 weights not found at {missing}", "model.clip_weights=",
                          "https://openaipublic.azureedge.net/clip/models/", "model.clip_download=true")


@pytest.mark.parametrize("amp, tol", [("fp16", 5e-3), ("bf16", 5e-2)])
def test_mixed_precision_step_is_close_to_fp32_and_the_head_stays_fp32(amp, tol):
    """Autocast runs the encoder in low precision; the cosine head computes in fp32, and the fp16
    run goes through the loss scaler of optim/base.py. One Focal-SAM step, plain SGD (no momentum)."""
    models = {a: tiny("lift") for a in ("none", amp)}
    x, y = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16 if amp == "bf16" else torch.float16):
        assert models[amp](x).dtype == torch.float32
    start = {n: p.detach().clone() for n, p in models["none"].named_parameters() if p.requires_grad}
    for a, model in models.items():
        cfg = section("optim", name="focal_sam", lr=0.5, momentum=0.0, weight_decay=0.0, rho=0.05, gamma=1.5, lam=0.7)
        opt = build_optimizer(cfg, model.parameters(), COUNTS, a)
        loss, _ = opt.step(model, x, y, build_loss(section("loss", name="la"), COUNTS))
        assert torch.isfinite(loss)
    for n, p0 in start.items():
        d32 = dict(models["none"].named_parameters())[n].detach() - p0
        dlow = dict(models[amp].named_parameters())[n].detach() - p0
        if d32.norm() > 0:
            assert (dlow - d32).norm() <= tol * d32.norm(), n


def test_download_is_staged_so_a_broken_one_leaves_no_weights_file(tmp_path, monkeypatch):
    import open_clip.pretrained
    target = tmp_path / "clip" / "ViT-B-16.pt"

    def partial(url, cache_dir):
        os.makedirs(cache_dir, exist_ok=True)
        with open(os.path.join(cache_dir, os.path.basename(url)), "wb") as f:
            f.write(b"half a file")
        raise ConnectionResetError("dropped")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", partial)
    with pytest.raises(UserError, match="the download failed: ConnectionResetError"):
        resolve_weights(str(target), download=True)
    assert sorted(os.listdir(tmp_path / "clip")) == []        # no weights file, no staging folder

    def complete(url, cache_dir):
        assert url.endswith("/ViT-B-16.pt") and "openaipublic" in url
        os.makedirs(cache_dir, exist_ok=True)
        got = os.path.join(cache_dir, "ViT-B-16.pt")
        with open(got, "wb") as f:
            f.write(b"weights")
        return got

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", complete)
    assert resolve_weights(str(target), download=True) == str(target)
    assert target.read_bytes() == b"weights" and sorted(os.listdir(tmp_path / "clip")) == ["ViT-B-16.pt"]


# ----------------------------------------------------------------------------- activation, eval, weights errors

@pytest.fixture
def vit_is_tiny(monkeypatch):
    """clip_vit_b16 with the tiny architecture: every path of the real model (weights file,
    activation, class names) at the cost of the tiny one."""
    monkeypatch.setattr(models.clip, "VIT_B16", TINY_CLIP)


def open_clip_weights(folder, quick_gelu: bool, config: bool = True, arch=TINY_CLIP) -> str:
    """An open_clip state dict as the Hugging Face hub keeps one: open_clip_pytorch_model.bin
    with open_clip_config.json (model_cfg.quick_gelu) beside it."""
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(5)
    torch.save(build_open_clip(arch, None, quick_gelu).state_dict(), os.path.join(folder, "open_clip_pytorch_model.bin"))
    if config:
        with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
            json.dump({"model_cfg": {"embed_dim": 16, "quick_gelu": quick_gelu}}, f)
    return os.path.join(folder, "open_clip_pytorch_model.bin")


def clip_b16(weights, **kw):
    return section("model", name="clip_vit_b16", clip_weights=str(weights), clip_download=False, **kw)


def activations(model):
    return {type(m).__name__ for m in model.modules() if isinstance(m, (nn.GELU, open_clip.transformer.QuickGELU))}


def test_activation_is_the_one_the_weights_were_trained_with(tmp_path, vit_is_tiny):
    names = NAMES[:3]
    for quick in (True, False):
        model = build_model(clip_b16(open_clip_weights(tmp_path / str(quick), quick)), 3, names)
        assert activations(model) == {"QuickGELU" if quick else "GELU"} and bool(model.quick_gelu) == quick
    bare = open_clip_weights(tmp_path / "bare", False, config=False)
    with pytest.raises(UserError) as e:                  # no config beside it: never a silent guess
        build_model(clip_b16(bare), 3, names)
    assert "\n" not in str(e.value) and "model.activation=quick_gelu or model.activation=gelu" in str(e.value)
    assert activations(build_model(clip_b16(bare, activation="gelu"), 3, names)) == {"GELU"}
    gelu = build_model(clip_b16(bare, activation="gelu"), 3, names)
    quick = build_model(clip_b16(bare, activation="quick_gelu"), 3, names)
    with pytest.raises(RuntimeError, match="activation mismatch: the checkpoint was trained with GELU"):
        quick.load_state_dict(gelu.state_dict())


def named_list_dataset(root) -> str:
    """Three classes of 32 x 32 PNGs (3, 2, 1 training images, one test image each) with class
    names, as ImageNet-LT's lists and classnames.txt lay them out: the data section of a config."""
    from PIL import Image
    os.makedirs(root / "img", exist_ok=True)
    rng = np.random.default_rng(0)
    train, test = [], []
    for k, n in enumerate((3, 2, 1)):
        for i in range(n + 1):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "img" / f"{k}_{i}.png")
            (train if i < n else test).append(f"img/{k}_{i}.png {k}")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    (root / "names.txt").write_text("n0 cat\nn1 dog\nn2 bird\n")
    return (f"data: {{name: imagenet_lt, root: {root}, train_list: {root / 'train.txt'}, test_list: {root / 'test.txt'}, "
            f"class_names: {root / 'names.txt'}, num_classes: 3, image_size: 224, num_workers: 0, preprocess: clip, "
            "head_threshold: 2, tail_threshold: 2}\n")


def test_eval_of_a_clip_run_reads_no_weights_file(tmp_path, capsys, vit_is_tiny):
    """A GELU CLIP trained one epoch, its weights file then deleted: eval.py rebuilds the model
    from the checkpoint alone (GELU, which it records) and reproduces the final report."""
    weights = open_clip_weights(tmp_path / "weights", quick_gelu=False)
    cfg = tmp_path / "clip.yaml"
    cfg.write_text(named_list_dataset(tmp_path / "data") +
                   f"model: {{name: clip_vit_b16, clip_weights: {weights}, clip_download: false, finetune: lift}}\n"
                   "loss: {name: la}\noptim: {name: sgd, lr: 0.01}\ntrain: {epochs: 1, batch_size: 4, progress: 'off'}\n")
    run = tmp_path / "run"
    train_cli.main(["--config", str(cfg), "--out", str(run)])
    for name in os.listdir(tmp_path / "weights"):
        os.remove(tmp_path / "weights" / name)
    eval_cli.main(["--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "eval.json")])
    with open(run / "final.json") as f, open(tmp_path / "eval.json") as g:
        final, ev = json.load(f), json.load(g)
    assert ev["per_class_acc"] == final["per_class_acc"] and ev["top1"] == final["top1"]


def train_error(capsys, *argv) -> str:
    """The one `error:` line (exit status 2) of train.py run here."""
    with pytest.raises(SystemExit) as e:
        train_cli.main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_weights_file_problems_are_one_line(tmp_path, capsys, vit_is_tiny):
    """A folder, a corrupt or truncated file, and weights of another architecture (the key and
    both shapes named) each stop train.py with one line."""
    good = open_clip_weights(tmp_path / "good", True)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(open(good, "rb").read()[:2000])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02not a checkpoint at all")
    other = open_clip_weights(tmp_path / "wide", True, arch={**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"],
                                                                                          "width": 48}})
    cfg = tmp_path / "clip.yaml"
    cfg.write_text(named_list_dataset(tmp_path / "data") +
                   "model: {name: clip_vit_b16, clip_download: false, activation: quick_gelu}\n"
                   "loss: {name: la}\noptim: {name: sgd, lr: 0.01}\ntrain: {epochs: 1, batch_size: 2}\n")
    run = lambda weights, out: train_error(capsys, "--config", cfg, "--out", tmp_path / out, "--set",
                                           f"model.clip_weights={weights}")
    assert "is a folder; give the weights file itself" in run(tmp_path / "good", "r1")
    for bad, out in ((truncated, "r2"), (junk, "r3")):
        line = run(bad, out)
        assert "cannot read CLIP weights" in line and "corrupt" in line and "weights_only" not in line
    line = run(other, "r4")
    assert "does not hold CLIP ViT-B/16 weights (size mismatch for visual." in line and "torch.Size([48" in line


# ----------------------------------------------------------------------------- the official fp16 precision

def test_fp16_precision_holds_and_updates_the_weights_in_fp16(tmp_path):
    """model.precision: fp16, the official code's --prec fp16: linear / conv / attention weights,
    adapters and head in fp16, LayerNorms in fp32; one SGD step rounds w - lr g to fp16 (no fp32
    master copy, no scaler), so an update below half a weight's fp16 spacing is lost, where the
    fp32 model moves."""
    models_ = {p: tiny("lift", precision=p) for p in ("fp32", "fp16")}
    half = models_["fp16"]
    block = half.visual.transformer.resblocks[0]
    assert block.attn.in_proj_weight.dtype == half.visual.conv1.weight.dtype == torch.float16
    assert block.mlp.adapter.down.weight.dtype == half.classifier.weight.dtype == torch.float16
    assert block.ln_1.weight.dtype == torch.float32
    x, y = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 3])
    assert half(x).dtype == torch.float16
    lost = {}
    for precision, model in models_.items():
        start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        cfg = section("optim", name="sgd", lr=0.01, momentum=0.0, weight_decay=0.0)
        opt = build_optimizer(cfg, model.parameters(), COUNTS, "none")
        loss, _ = opt.step(model, x, y, build_loss(section("loss", name="la"), COUNTS))
        assert torch.isfinite(loss) and not opt.scaler.is_enabled()
        lost[precision] = 0
        for n, p in model.named_parameters():
            if n in start:
                g = p.grad
                assert p.dtype == g.dtype == start[n].dtype
                expected = (start[n].double() - 0.01 * g.double()).to(p.dtype)   # one rounding to the weight's dtype
                # Older torch rounds lr * g to the weight's dtype before adding (two roundings):
                # within one spacing of the exact step, and near 0 within the smallest subnormal.
                ulp, tiny_step = (2.0 ** -10, 2.0 ** -24) if precision == "fp16" else (2.0 ** -23, 2.0 ** -149)
                err = (p.detach().double() - expected.double()).abs()
                assert (err <= ulp * expected.double().abs() + tiny_step).all(), n
                lost[precision] += int(((p.detach() == start[n]) & (g != 0)).sum())
    assert lost["fp32"] == 0 and lost["fp16"] > 0


def test_fp16_precision_refuses_autocast():
    with pytest.raises(ConfigError, match="model.precision.*set train.amp=none"):
        from engine.config import config_from_tree
        config_from_tree({"data": {"name": "synthetic", "preprocess": "clip"},
                          "model": {"name": "clip_tiny", "precision": "fp16"}, "train": {"amp": "fp16"}})
