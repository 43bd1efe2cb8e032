"""CLIP image encoders fine-tuned for long-tailed classification, as in LIFT (Shi et al., ICML
2024) and the foundation-model rows of Focal-SAM (Li et al., ICML 2025, section 5.1, App. C.4).

The model is CLIP's image encoder followed by a cosine classifier: logits = s * cos(f, w_k),
f = LN_post(CLS token) (the encoder's width, 768 for ViT-B/16, before CLIP's projection) and
s = `cosine_scale` (25 in the official Focal-SAM code, LIFT's `scale: 25`). Row w_k starts as the
text encoder's embedding of class k's prompt, mapped into the image width through the image
projection P (f @ P is CLIP's image embedding, so f . (P t) = (f @ P) . t):

    t_k = mean over templates of normalize(text_encoder(template.format(name_k)))
    w_k = normalize(P t_k)

in the dataset's own label order (the LIFT and Focal-SAM code re-sort iNaturalist's classes by
name; here class k stays category id k). The text encoder is then dropped: it is not part of the
model, its state dict or its optimizer.

Fine-tuning modes (`finetune`):
  full  every transformer block of the image encoder and the head train (LIFT's `full_tuning`,
        the paper's FFT); the patch and position embeddings and the outer LayerNorms stay frozen
        as in LIFT's code.
  lift  only AdaptFormer adapters (models/adapters.py) and the head train (LIFT).
Frozen parameters have requires_grad = False; every optimizer in optim/ perturbs and updates
only parameters that require gradients, so frozen weights stay bit-identical.

Weights: OpenAI's ViT-B-16.pt (a TorchScript archive, as OpenAI's `clip` package downloads it),
or an open_clip state dict (.pt / .bin / .safetensors), read from `clip_weights`. Built with
open_clip's ViT-B-16 architecture and the activation the weights were trained with
(`activation: auto`): QuickGELU for OpenAI's archive, the `quick_gelu` of the open_clip_config.json
that open_clip and the Hugging Face hub keep beside an open_clip file (open_clip's plain ViT-B-16
uses nn.GELU); a file without one is refused until `activation` is set. The model records it
(`quick_gelu`, a buffer in its state dict), so a trained checkpoint rebuilds the same network.

A trained run's checkpoint holds every weight (image encoder, adapters, head): `trained_state`
builds the model to receive it, without the weights file and without the text tower.

Precision (`precision`): fp32 weights (default; `train.amp: fp16` adds autocast and a loss
scaler), or fp16, the official Focal-SAM code's `--prec fp16` (its default for CIFAR and
ImageNet-LT): every linear, convolution and attention weight, the adapters and the head held and
updated in fp16, LayerNorms computed in fp32 (OpenAI's `convert_weights`), no fp32 master copy
and no loss scaler. Updates smaller than half the fp16 spacing of a weight are lost there.
"""
import json
import os
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import UserError, mismatch_reason
from core.devices import pick_device
from models.adapters import AdaptFormer, add_adaptformer, lift_adapter_dim
from core.options import opt, require
from models.heads import Classifier, ModelOptions


@dataclass(frozen=True)
class ClipTinyOptions(ModelOptions):
    """Keys of every CLIP model (the tiny random one reads no weights)."""
    finetune: Literal["full", "lift"] = opt("full", "CLIP: full = every transformer block + head (FFT); lift = AdaptFormer adapters + head")
    adapter_dim: int = opt(0, "CLIP lift: adapter bottleneck width; 0 = LIFT's rule 2^floor(log2(C / 2L))")
    cosine_scale: float = opt(25.0, "CLIP: logits = cosine_scale * cos(feature, class weight) (official code: 25)")
    prompts: Tuple[str, ...] = opt(("a photo of a {}.",), "CLIP head init: text templates, {} = class name, averaged")
    activation: Literal["auto", "quick_gelu", "gelu"] = opt(
        "auto", "CLIP MLP activation; auto: from the weights (OpenAI's file: QuickGELU; an open_clip file: its "
                "open_clip_config.json; clip_tiny: QuickGELU)")
    precision: Literal["fp32", "fp16"] = opt(
        "fp32", "CLIP weights: fp32, or fp16 = the official code's --prec fp16 (weights updated in fp16, no master "
                "copy, no scaler; needs train.amp: none)")

    stackable = False   # open_clip's modules are not checked under vmap (engine/group.py)

    def check(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class ClipOptions(ClipTinyOptions):
    clip_weights: str = opt("~/.cache/clip/ViT-B-16.pt", "CLIP: OpenAI's ViT-B-16.pt or an open_clip checkpoint")
    clip_download: bool = opt(True, "CLIP: download OpenAI's file to clip_weights when it is missing")

# A randomly initialised CLIP small enough for CPU tests and smoke runs: the same code paths as
# ViT-B/16 (open_clip towers, the real BPE tokenizer, hence its full vocabulary) at 224 px input.
TINY_CLIP = dict(embed_dim=16,
                 vision_cfg=dict(image_size=224, layers=2, width=32, patch_size=32, head_width=16),
                 text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
VIT_B16 = None   # overrides of open_clip's ViT-B-16 config for clip_vit_b16: none (tests put TINY_CLIP here)
NOT_CHECKPOINT_KEYS = ("input_resolution", "context_length", "vocab_size")   # ints in OpenAI's archive


# ----------------------------------------------------------------------------- the weights

def import_open_clip():
    """open_clip, imported when a CLIP model is built (no other run needs it). open_clip 2.24
    imports timm's deprecated `timm.models.layers`, and a newer timm answers with a FutureWarning
    on stderr at every start: noise above the run's first line, not a fault of the user's setup."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\b")
        import open_clip
    return open_clip


def openai_url(arch: str = "ViT-B-16") -> str:
    open_clip = import_open_clip()
    return open_clip.get_pretrained_cfg(arch, "openai")["url"]


def weights_missing_message(path: str, why: str) -> str:
    return (f"CLIP ViT-B/16 weights not found at {path} ({why}): put OpenAI's ViT-B-16.pt there or set "
            f"model.clip_weights=/path/to/ViT-B-16.pt; get the file on a machine with internet from "
            f"{openai_url()} (or run once there with model.clip_download=true, which saves it at that path)")


def download_openai_weights(path: str) -> None:
    """Fetch OpenAI's ViT-B-16.pt (open_clip checks its SHA-256) into a folder beside `path`, then
    move it there: an interrupted or corrupt download never shows up as the weights file."""
    from open_clip.pretrained import download_pretrained_from_url
    staging = f"{path}.download"
    try:
        os.replace(download_pretrained_from_url(openai_url(), cache_dir=staging), path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_weights(path: str, download: bool, fetch: Callable[[str], None] = download_openai_weights) -> str:
    """The weights file to read: `path` (with ~ expanded), downloaded there first when missing
    and `download` is on; one-line UserError saying where to put it otherwise."""
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        raise UserError(f"model.clip_weights {full} is a folder; give the weights file itself (OpenAI's "
                        "ViT-B-16.pt, or an open_clip .pt / .bin / .safetensors file)")
    if os.path.isfile(full):
        return full
    if not download:
        raise UserError(weights_missing_message(full, "model.clip_download is off"))
    try:
        fetch(full)
    except Exception as e:   # no network, proxy, checksum: the user places the file by hand
        raise UserError(weights_missing_message(full, f"the download failed: {type(e).__name__}")) from None
    return full


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("constants.pkl") for name in z.namelist())


def read_clip_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A CLIP state dict from OpenAI's TorchScript archive or an open_clip checkpoint."""
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():   # torch.jit is deprecated, but OpenAI's file is TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(path, map_location="cpu").state_dict()
        elif path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as e:   # torch's text here is a paragraph about weights_only or zip records
        raise UserError(f"cannot read CLIP weights {path}: the file is corrupt, truncated or of another kind "
                        f"({type(e).__name__}); expected OpenAI's ViT-B-16.pt or an open_clip .pt / .bin / "
                        ".safetensors state dict: download it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no state dict of CLIP weights (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items() if k not in NOT_CHECKPOINT_KEYS}


OPEN_CLIP_CONFIG = "open_clip_config.json"   # open_clip / Hugging Face hub: the model config beside the weights


def weights_activation(path: str) -> str:
    """'quick_gelu' or 'gelu': the activation the weights at `path` were trained with. OpenAI's
    TorchScript archive: QuickGELU (OpenAI's CLIP). An open_clip file: `model_cfg.quick_gelu` of
    the open_clip_config.json beside it (open_clip's default when absent: GELU)."""
    if _is_torchscript(path):
        return "quick_gelu"
    config = os.path.join(os.path.dirname(path), OPEN_CLIP_CONFIG)
    if not os.path.isfile(config):
        raise UserError(f"cannot tell whether {path} was trained with QuickGELU (OpenAI's CLIP) or GELU (most "
                        f"open_clip models): no {OPEN_CLIP_CONFIG} beside it; set model.activation=quick_gelu or "
                        "model.activation=gelu")
    try:
        with open(config) as f:
            model_cfg = json.load(f)["model_cfg"]
        return "quick_gelu" if bool(model_cfg.get("quick_gelu", False)) else "gelu"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{config} is not an open_clip config (no model_cfg: {type(e).__name__}); fix or remove "
                        "it, or set model.activation=quick_gelu or gelu") from None


def resolve_activation(setting: str, weights: Optional[str]) -> str:
    """`activation` as set, or from the weights file (auto); the tiny random model: QuickGELU."""
    if setting != "auto":
        return setting
    return weights_activation(weights) if weights else "quick_gelu"


def build_open_clip(arch: Optional[dict], weights: Optional[str], quick_gelu: bool, precision: str = "fp32"):
    """open_clip's ViT-B-16 CLIP (`arch` overrides its config: the tiny test model), random init,
    then the weights from `weights` when given. fp16: its LayerNorms compute in fp32 (open_clip's
    LayerNormFp32, OpenAI's LayerNorm); the weights stay fp32 until `ClipClassifier.to_fp16`."""
    open_clip = import_open_clip()
    cfg = {**open_clip.get_model_config("ViT-B-16"), **(arch or {}), "quick_gelu": quick_gelu}
    model = open_clip.CLIP(**cfg, cast_dtype=torch.float16 if precision == "fp16" else None)
    if weights:
        state = read_clip_state_dict(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise UserError(f"{weights} does not hold CLIP ViT-B/16 weights ({mismatch_reason(e)}); give OpenAI's "
                            "ViT-B-16.pt or an open_clip ViT-B-16 checkpoint") from None
    return model


# ----------------------------------------------------------------------------- the head

def prompts_for(template: str, class_names: Sequence[str]) -> List[str]:
    """One prompt per class in label order; underscores read as spaces (CIFAR-100's 'maple_tree')."""
    return [template.format(name.replace("_", " ")) for name in class_names]


@torch.no_grad()
def text_head_weights(clip, class_names: Sequence[str], templates: Sequence[str], device: torch.device,
                      chunk: int = 1000) -> torch.Tensor:
    """(C, D) head rows w_k = normalize(P t_k), t_k the template-averaged unit text embedding."""
    open_clip = import_open_clip()
    clip = clip.to(device).eval()
    total = 0.0
    for template in templates:
        tokens = open_clip.tokenize(prompts_for(template, class_names), context_length=clip.context_length)
        emb = torch.cat([clip.encode_text(t.to(device)) for t in tokens.split(chunk)])    # (C, E)
        total = total + F.normalize(emb.float(), dim=-1)
    text = total / len(templates)
    return F.normalize(text @ clip.visual.proj.float().t(), dim=-1).cpu()                 # (C, D)


class ScaledCosineHead(nn.Module):
    """logits = scale * cos(f, w_k), computed in the weights' precision even under autocast."""

    def __init__(self, weight: torch.Tensor, scale: float):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())     # (C, D)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:        # (B, D) -> (B, C)
        with torch.autocast(x.device.type, enabled=False):
            x = F.normalize(x.to(self.weight.dtype), dim=-1)
            return self.scale * (x @ F.normalize(self.weight, dim=-1).t())


# ----------------------------------------------------------------------------- the model

class ClipClassifier(Classifier):
    """CLIP's image encoder (`visual`, open_clip VisionTransformer without its projection) and the
    text-initialised cosine head (`classifier`). `finetune` picks the trainable parameters;
    `quick_gelu` records the encoder's activation in the state dict (a checkpoint rebuilds it)."""

    def __init__(self, visual: nn.Module, head_weight: torch.Tensor, scale: float, finetune: str,
                 adapter_dim: int = 0, quick_gelu: bool = True):
        super().__init__()
        self.register_buffer("quick_gelu", torch.tensor(bool(quick_gelu)))
        if finetune not in ("full", "lift"):
            raise ValueError(f"finetune must be 'full' or 'lift', got {finetune!r}")
        visual.proj = None                                      # features f: LN_post(CLS), width D
        self.visual = visual
        self.classifier = ScaledCosineHead(head_weight, scale)
        self.finetune = finetune
        blocks = visual.transformer.resblocks
        if finetune == "lift":
            width = visual.ln_post.normalized_shape[0]
            dim = adapter_dim or lift_adapter_dim(head_weight.shape[0], len(blocks))
            add_adaptformer(blocks, width, dim)
        self.requires_grad_(False)
        trainable = blocks if finetune == "full" else [b.mlp.adapter for b in blocks]
        for module in list(trainable) + [self.classifier]:
            module.requires_grad_(True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:   # (B, 3, H, W) -> (B, D)
        return self.visual(x.to(self.visual.conv1.weight.dtype))      # fp16 weights take fp16 images

    @torch.no_grad()
    def to_fp16(self) -> "ClipClassifier":
        """The official code's fp16 model: the encoder's linear, convolution and attention weights
        (open_clip's convert_weights_to_lp, OpenAI's convert_weights), the adapters and the head in
        fp16; LayerNorm weights, class and position embeddings stay fp32, as there."""
        open_clip = import_open_clip()
        open_clip.model.convert_weights_to_lp(self.visual, torch.float16)
        for module in self.modules():
            if isinstance(module, AdaptFormer):
                module.half()
        self.classifier.half()
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The activation is part of the network: a checkpoint of the other one must not load.
        # Checkpoints from before it was recorded all used QuickGELU.
        key = prefix + "quick_gelu"
        stored = bool(state_dict.get(key, torch.tensor(True)))
        if stored != bool(self.quick_gelu):
            error_msgs.append(f"activation mismatch: the checkpoint was trained with {_activation(stored)}, this "
                              f"model uses {_activation(bool(self.quick_gelu))} (model.activation)")
        state_dict[key] = self.quick_gelu
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _activation(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


def placeholder_names(class_names: Sequence[str]) -> bool:
    """True for the 'class_k' names a dataset reports when it has no real ones."""
    return all(name == f"class_{k}" for k, name in enumerate(class_names))


def check_options(cfg) -> None:
    """The CLIP options' values and combinations (OptionError naming the key)."""
    require("classifier", cfg.classifier == "linear", f"model '{cfg.name}' has its own text-initialised cosine "
            "head (scale model.cosine_scale); remove model.classifier", cfg.classifier)
    require("adapter_dim", not cfg.adapter_dim or cfg.finetune == "lift",
            f"sizes the LIFT adapters; it is unused with model.finetune: {cfg.finetune}", cfg.adapter_dim)
    require("adapter_dim", cfg.adapter_dim >= 0, "must be >= 0 (0: LIFT's rule)", cfg.adapter_dim)
    require("prompts", bool(cfg.prompts) and all(t.count("{}") == 1 for t in cfg.prompts),
            "each template needs one '{}' for the class name", list(cfg.prompts))
    require("cosine_scale", cfg.cosine_scale > 0, "must be > 0", cfg.cosine_scale)


def build_clip_classifier(cfg, num_classes: int, class_names: Optional[Sequence[str]], tiny: bool,
                          trained_state: Optional[dict] = None):
    """The registry builder. `tiny`: the random TINY_CLIP (tests, smoke runs), else ViT-B/16
    with the weights of `cfg.clip_weights`. `trained_state`: a trained model's state dict that
    will be loaded next: the network is built to receive it (its recorded activation, a blank
    head), reading neither the weights file nor the class names."""
    check_options(cfg)
    arch = TINY_CLIP if tiny else VIT_B16
    if trained_state is not None:
        quick_gelu = bool(trained_state.get("quick_gelu", torch.tensor(True)))   # see _load_from_state_dict
        visual = build_open_clip(arch, None, quick_gelu, cfg.precision).visual
        head = torch.zeros(num_classes, visual.ln_post.normalized_shape[0])
        return _classifier(visual, head, cfg, quick_gelu)
    if class_names is None or len(class_names) != num_classes:
        raise UserError(f"model '{cfg.name}' initialises its head from the {num_classes} class names of the "
                        "dataset; none were given")
    weights = None if tiny else resolve_weights(cfg.clip_weights, cfg.clip_download)
    if not tiny and placeholder_names(class_names):
        raise UserError(f"model '{cfg.name}' initialises its head from class names, but the dataset reports "
                        "none (class_0, class_1, ...); set data.class_names to the dataset's names file")
    quick_gelu = resolve_activation(cfg.activation, weights) == "quick_gelu"
    clip = build_open_clip(arch, weights, quick_gelu, cfg.precision)
    device = pick_device("auto")
    # fp16: the head rows are computed in fp32 and rounded once (the official code computes them
    # with its fp16 text tower; the two differ by rounding only).
    head = text_head_weights(clip, class_names, cfg.prompts, device)
    visual = clip.visual.cpu()
    del clip                                                   # the text tower is not kept
    return _classifier(visual, head, cfg, quick_gelu)


def _classifier(visual, head: torch.Tensor, cfg, quick_gelu: bool) -> ClipClassifier:
    model = ClipClassifier(visual, head, cfg.cosine_scale, cfg.finetune, cfg.adapter_dim, quick_gelu)
    return model.to_fp16() if cfg.precision == "fp16" else model


def build_clip(tiny: bool, options: ClipTinyOptions, num_classes: int, class_names=None, trained_state=None):
    """Registry builder (models/__init__.py): `tiny` picks the random TINY_CLIP."""
    return build_clip_classifier(options, num_classes, class_names, tiny, trained_state)
