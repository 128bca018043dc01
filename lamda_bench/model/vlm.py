"""Vision-language (image-text-to-text) workloads: images in, text out, built from config.json alone.

A config whose ``architectures`` names an ``AutoModelForImageTextToText`` class (Qwen2-VL,
Qwen2.5-VL, LLaVA, Gemma 3, ...) is the ``image-text`` task. Its inputs are what the model's
own processor would make, computed from the config (no processor download):

- ``pixel_values`` for ``images`` images per sample (cell key, default 1) of ``image_size``
  pixels (cell key: one side or ``HxW``; default: the vision tower's native size, 448 for the
  Qwen2-VL family), plus the model's image metadata (Qwen2-VL's ``image_grid_thw`` and
  ``mm_token_type_ids``, Gemma 3's ``token_type_ids``);
- image placeholder tokens in ``input_ids``, as many per image as the architecture's rule
  (``tokens_per_image``) gives, wrapped in the family's start / end markers where it has them;
- labels on the text only (image placeholders are -100).

**seq counts text tokens only** (the markers included): a sample is ``seq`` text tokens plus
``images * tokens_per_image`` image tokens; the record has both (``info.vlm``).

Tokens per image, per family (``image_rule``):

- ``qwen2_vl`` / ``qwen2_5_vl``: the processor resizes each side to a multiple of
  ``patch_size * spatial_merge_size`` (28) within its pixel bounds, then
  tokens = (H / 14) (W / 14) / 4 (448 x 448 -> 256);
- ``llava``: the CLIP tower's fixed size only; tokens = (size / patch)^2 (+1 with the ``full``
  feature strategy): 336 / 14 -> 576;
- ``gemma3``: the SigLIP tower's fixed size only; tokens = ``mm_tokens_per_image`` (256).

- ``mllama`` (Llama 3.2 Vision): one ``<|image|>`` token per image in the text; the image is
  cut into 560 x 560 tiles (``image_size`` must be such a canvas: 560, 560x1120, 1120x1120...,
  one of the config's ``supported_aspect_ratios``; the processor's resize to the best canvas is
  not modelled) that the language model reads through its cross-attention layers:
  ``aspect_ratio_ids``, ``aspect_ratio_mask`` and a ``cross_attention_mask`` (each text token sees
  the images before it) come with it; ``info.vlm.cross_attention_tokens_per_image`` is
  tiles x (patches + 1, padded to a multiple of 8) = 1608 per 560 tile.

Other image-text families are refused in one line (no rule here to count their tokens).

Fake tensors (estimate mode) carry no values, and these models read their integer inputs
(grid sizes, placeholder positions): those small integer tensors are made *constant* fake
tensors (real values inside, ``constant_inputs``), the fake mode propagates constants through
integer ops while the forward runs (``forward_context``), and every float tensor stays a plain
fake. Qwen2-VL's 3-D rope positions are computed with the inputs by the model class's own
``get_rope_index`` from the real ids, in both modes, so estimate and measurement run the same ops.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from .config import WorkloadError

TASK = "image-text"
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
FIXED_FAMILIES = ("llava", "gemma3")
TILED_FAMILIES = ("mllama",)
QWEN_DEFAULT_SIZE = 448
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 28 * 28 * 16384  # Qwen2-VL's preprocessor_config.json bounds
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class ImageRule:
    """How one image becomes tokens for a family (see the module docstring)."""

    family: str
    patch: int
    native: tuple[int, int] | None  # the only size a fixed-size tower takes
    image_token: int
    start_token: int | None = None  # a marker before each image (counted in seq)
    end_token: int | None = None
    merge: int = 1
    temporal: int = 1
    channels: int = 3
    extra_tokens: int = 0  # LLaVA "full": the CLS token kept
    fixed_tokens: int | None = None  # Gemma 3: mm_tokens_per_image; Mllama: 1 <|image|> token
    aspect_ratios: tuple[tuple[int, int], ...] = ()  # Mllama: the tile canvases it takes
    max_tiles: int = 1  # Mllama: tile slots per image (the processor pads every image to them)

    def size(self, image_size: Any) -> tuple[int, int]:
        """The (H, W) the model sees for a cell's ``image_size`` (None: the native / default size)."""
        if image_size is None:
            return self.native or (QWEN_DEFAULT_SIZE, QWEN_DEFAULT_SIZE)
        h, w = parse_image_size(image_size)
        if h < self.patch or w < self.patch:
            raise WorkloadError(f"image_size {h}x{w} is below one {self.patch}-pixel patch of {self.family}")
        if self.aspect_ratios:
            t = self.native[0]
            if h % t or w % t or (h // t, w // t) not in self.aspect_ratios:
                canvases = ", ".join(f"{a * t}x{b * t}" for a, b in self.aspect_ratios)
                raise WorkloadError(f"{self.family} cuts images into {t}x{t} tiles: image_size must be a tiled "
                                    f"canvas ({canvases}), got {h}x{w} (the processor's resize is not modelled)")
            return h, w
        if self.native is not None:
            if (h, w) != self.native:
                nh, nw = self.native
                raise WorkloadError(f"{self.family}'s vision tower takes {nh}x{nw} images only (fixed position "
                                    f"embeddings; its processor resizes to that), got image_size {h}x{w}")
            return h, w
        return _qwen_resize(h, w, self.patch * self.merge)

    def tokens(self, hw: tuple[int, int]) -> int:
        if self.fixed_tokens is not None:
            return self.fixed_tokens
        h, w = hw
        return (h // self.patch) * (w // self.patch) // (self.merge * self.merge) + self.extra_tokens

    def tiles(self, hw: tuple[int, int]) -> tuple[int, int]:
        return hw[0] // self.native[0], hw[1] // self.native[1]

    def cross_attention_tokens(self) -> int:
        """Mllama: vision tokens one image puts in the cross-attention: every tile slot (unused ones
        masked, still computed), each tile's patches + CLS padded to a multiple of 8."""
        per_tile = (self.native[0] // self.patch) ** 2 + 1
        return self.max_tiles * (per_tile + (8 - per_tile % 8) % 8)

    @property
    def markers(self) -> int:
        return (self.start_token is not None) + (self.end_token is not None)


def parse_image_size(value: Any) -> tuple[int, int]:
    """``448`` or ``"448"`` -> (448, 448); ``"448x672"`` -> (448, 672); anything else one line."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, value
    if isinstance(value, str):
        if value.strip().isdigit() and int(value) >= 1:
            return int(value), int(value)
        m = _SIZE_RE.match(value)
        if m and int(m.group(1)) >= 1 and int(m.group(2)) >= 1:
            return int(m.group(1)), int(m.group(2))
    raise WorkloadError(f"image_size must be pixels as one side (448) or 'HxW' ('448x672'), got {value!r}")


def _qwen_resize(h: int, w: int, factor: int) -> tuple[int, int]:
    """Qwen2-VL's processor ``smart_resize``: each side rounded to a multiple of ``factor``, the
    area kept within the pixel bounds (aspect ratio kept); an aspect ratio over 200 is refused."""
    if max(h, w) / min(h, w) > 200:
        raise WorkloadError(f"image_size {h}x{w}: Qwen2-VL's processor refuses an aspect ratio over 200")
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > QWEN_MAX_PIXELS:
        beta = math.sqrt(h * w / QWEN_MAX_PIXELS)
        hb, wb = max(factor, math.floor(h / beta / factor) * factor), max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < QWEN_MIN_PIXELS:
        beta = math.sqrt(QWEN_MIN_PIXELS / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def image_rule(cfg, family: str) -> ImageRule:
    """The family's image rule from the transformers config object; one line for a family without one."""
    vision = cfg.vision_config
    if family in TILED_FAMILIES:
        return ImageRule(family, vision.patch_size, (vision.image_size,) * 2, cfg.image_token_id,
                         channels=vision.num_channels, fixed_tokens=1, max_tiles=vision.max_num_tiles,
                         aspect_ratios=tuple(tuple(a) for a in vision.supported_aspect_ratios))
    if family in QWEN_FAMILIES:
        return ImageRule(family, vision.patch_size, None, cfg.image_token_id, cfg.vision_start_token_id,
                         cfg.vision_end_token_id, merge=vision.spatial_merge_size,
                         temporal=vision.temporal_patch_size, channels=getattr(vision, "in_channels", 3))
    if family == "llava":
        strategy = cfg.vision_feature_select_strategy
        return ImageRule(family, vision.patch_size, (vision.image_size,) * 2, cfg.image_token_id,
                         extra_tokens=1 if strategy == "full" else 0, channels=vision.num_channels)
    if family == "gemma3":
        return ImageRule(family, vision.patch_size, (vision.image_size,) * 2, cfg.image_token_id,
                         cfg.boi_token_id, cfg.eoi_token_id, channels=vision.num_channels,
                         fixed_tokens=cfg.mm_tokens_per_image)
    check_family(family)


def check_family(family: str, where: str = "") -> None:
    """One-line WorkloadError for an image-text family without a token rule here: called when the
    workload is read (suite parse, estimate's flags), so the cell never starts."""
    if family in QWEN_FAMILIES + FIXED_FAMILIES + TILED_FAMILIES:
        return
    raise WorkloadError(f"{where + ': ' if where else ''}model_type {family!r}: no rule here for how many tokens an "
                        f"image becomes; image-text families modelled: "
                        f"{', '.join(QWEN_FAMILIES + FIXED_FAMILIES + TILED_FAMILIES)}")


# ---- config: depth of the language model and of the vision tower ------------------------------

_VISION_DEPTH_KEYS = ("depth", "num_hidden_layers")


def adjust_config(config: dict[str, Any], layers: int | None, vision_layers: int | None) -> dict[str, Any]:
    """The config dict with ``layers`` as the language model's depth (``text_config`` when nested,
    else the top level) and ``vision_layers`` as the vision tower's (``depth`` / ``num_hidden_layers``)."""
    d = dict(config)
    if layers is not None:
        text = dict(d["text_config"]) if isinstance(d.get("text_config"), dict) else None
        target = text if text is not None else d
        target["num_hidden_layers"] = layers
        if isinstance(target.get("cross_attention_layers"), list):  # Mllama: those that still exist
            target["cross_attention_layers"] = [i for i in target["cross_attention_layers"] if i < layers]
        if isinstance(target.get("layer_types"), list) and target["layer_types"]:
            pattern = target["layer_types"]
            target["layer_types"] = [pattern[i % len(pattern)] for i in range(layers)]
        if text is not None:
            d["text_config"] = text
    if vision_layers is not None:
        if d.get("model_type") in TILED_FAMILIES:
            raise WorkloadError("vision_layers: Mllama's projector width follows its tower's "
                                "intermediate_layers_indices, so its depth is not overridden here")
        vision = dict(d.get("vision_config") or {})
        keys = [k for k in _VISION_DEPTH_KEYS if k in vision] or ["num_hidden_layers"]
        for key in keys:
            vision[key] = vision_layers
        d["vision_config"] = vision
    return d


def vision_depth(cfg) -> int | None:
    vision = cfg.vision_config
    for key in _VISION_DEPTH_KEYS:
        value = getattr(vision, key, None)
        if isinstance(value, int):
            return value
    return None


# ---- what one sample is ---------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    images: int
    height: int
    width: int
    tokens_per_image: int
    text_tokens: int

    @property
    def image_tokens(self) -> int:
        return self.images * self.tokens_per_image

    @property
    def total_tokens(self) -> int:
        return self.text_tokens + self.image_tokens


def layout(cell, cfg, family: str) -> Layout:
    rule = image_rule(cfg, family)
    images = 1 if cell.images is None else cell.images
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise WorkloadError(f"images must be an integer >= 1 for image-text workload {cell.workload!r} "
                            f"(its loss needs at least one image per sample), got {images!r}")
    h, w = rule.size(cell.image_size)
    if family in TILED_FAMILIES and not cfg.text_config.cross_attention_layers:
        raise WorkloadError(f"layers {cfg.text_config.num_hidden_layers} keeps none of Mllama's cross-attention "
                            "layers, so the images would not reach the language model; use more layers")
    need = images * rule.markers + 1
    if cell.seq < need:
        raise WorkloadError(f"seq {cell.seq} (text tokens) is too short for {images} image(s) of {family}: "
                            f"its markers and one text token need seq >= {need}")
    return Layout(images, h, w, rule.tokens((h, w)), cell.seq)


def facts(cell, cfg, family: str) -> dict[str, Any]:
    """``info.vlm``: the image layout and the rule's count, text and total tokens per sample."""
    lay = layout(cell, cfg, family)
    extra = {}
    if family in TILED_FAMILIES:
        rule = image_rule(cfg, family)
        extra = {"tiles_per_image": "x".join(map(str, rule.tiles((lay.height, lay.width)))),
                 "tile_slots_per_image": rule.max_tiles,
                 "cross_attention_tokens_per_image": rule.cross_attention_tokens(),
                 "cross_attention_layers": len(cfg.text_config.cross_attention_layers)}
    return {"images_per_sample": lay.images, "image_size": f"{lay.height}x{lay.width}",
            "tokens_per_image": lay.tokens_per_image, "text_tokens": lay.text_tokens,
            "image_tokens": lay.image_tokens, "total_tokens": lay.total_tokens,
            "seq_counts": "text tokens (markers included); image tokens are added",
            "vision_layers": vision_depth(cfg)} | extra


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return next((m for m in reversed(_get_current_dispatch_mode_stack()) if isinstance(m, FakeTensorMode)), None)


def constant_inputs(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Real integer tensors as the step's inputs: moved to ``device``, or, under a fake mode,
    made constant fake tensors (values kept, so the model's integer logic can run)."""
    mode = _fake_mode()
    if mode is None:
        return {k: v.to(device) for k, v in tensors.items()}
    return {k: mode.fake_tensor_converter.from_real_tensor(mode, v, make_constant=True) for k, v in tensors.items()}


def make_inputs(cell, cfg, family: str, device: torch.device, dtype: torch.dtype, gen: torch.Generator):
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    rule = image_rule(cfg, family)
    lay = layout(cell, cfg, family)
    b = cell.batch
    vocab = cfg.get_text_config().vocab_size
    special = {t for t in (rule.image_token, rule.start_token, rule.end_token) if t is not None}
    with unset_fake_temporarily():
        text = torch.randint(0, vocab, (b, lay.text_tokens), generator=gen)
        for t in special:  # plain text never holds a special token
            text[text == t] = (t + 1) % vocab if (t + 1) % vocab not in special else 0
        pieces, start = [], 0
        step = max(1, (lay.text_tokens - lay.images * rule.markers) // (lay.images + 1))
        for _ in range(lay.images):
            pieces.append(text[:, start:start + step])
            start += step
            block = [rule.start_token] if rule.start_token is not None else []
            block += [rule.image_token] * lay.tokens_per_image
            block += [rule.end_token] if rule.end_token is not None else []
            pieces.append(torch.tensor(block, dtype=torch.long).expand(b, -1))
        pieces.append(text[:, start + lay.images * rule.markers:])
        ids = torch.cat(pieces, dim=1)
        assert ids.shape[1] == lay.total_tokens, (ids.shape, lay)
        is_image = ids == rule.image_token
        labels = ids.masked_fill(is_image, -100)
        ints = {"input_ids": ids, "labels": labels}
        if family in TILED_FAMILIES:
            th, tw = rule.tiles((lay.height, lay.width))
            tiles, slots, side = th * tw, rule.max_tiles, rule.native[0]
            ints["aspect_ratio_ids"] = torch.full((b, lay.images), rule.aspect_ratios.index((th, tw)) + 1)
            ints["aspect_ratio_mask"] = torch.zeros((b, lay.images, slots), dtype=torch.long)
            ints["aspect_ratio_mask"][..., :tiles] = 1
            cross = torch.zeros((b, lay.total_tokens, lay.images, slots), dtype=torch.long)
            for i, pos in enumerate(torch.nonzero(is_image[0]).flatten().tolist()):
                cross[:, pos:, i, :tiles] = 1  # each text token sees the images before it, their used tiles
            ints["cross_attention_mask"] = cross
            pixel_shape = (b, lay.images, slots, rule.channels, side, side)
        elif family in QWEN_FAMILIES:
            grid = [lay.height // rule.patch, lay.width // rule.patch]
            ints["image_grid_thw"] = torch.tensor([[1, *grid]] * (b * lay.images), dtype=torch.long)
            ints["mm_token_type_ids"] = is_image.int()
            ints["position_ids"] = _rope_positions(cfg, ints)
            pixel_shape = (b * lay.images * grid[0] * grid[1], rule.channels * rule.temporal * rule.patch ** 2)
        else:
            if family == "gemma3":
                ints["token_type_ids"] = is_image.long()
            pixel_shape = (b * lay.images, rule.channels, lay.height, lay.width)
    inputs = constant_inputs(ints, device)
    if device.type == "meta":
        inputs["pixel_values"] = torch.zeros(pixel_shape, dtype=dtype, device=device)
    else:
        inputs["pixel_values"] = torch.randn(pixel_shape, generator=gen).to(device=device, dtype=dtype)
    return inputs


@contextlib.contextmanager
def forward_context():
    """While the forward runs under a fake mode, ops whose inputs are all constant (the integer
    metadata) are computed for real, whatever their size (torch's default stops at one element)."""
    import torch._subclasses.fake_tensor as ft

    old = ft.CONSTANT_NUMEL_LIMIT
    ft.CONSTANT_NUMEL_LIMIT = 1 << 26
    patched = _patch_vision_utils() if _fake_mode() is not None else []
    try:
        yield
    finally:
        ft.CONSTANT_NUMEL_LIMIT = old
        for module, name, original in patched:
            setattr(module, name, original)


def _patch_vision_utils() -> list:
    """transformers' ``vision_utils`` helpers that build their integer bookkeeping from ``grid_thw``
    with factory ops, which constant propagation does not reach (Qwen2.5-VL's window index): under
    a fake mode they run for real on the constants' values and return constant fakes. Only those:
    the helpers constant propagation does reach are left alone (wrapping them moved a tiny
    Qwen2-VL estimate 48 B off its measurement; as is, both agree to the byte)."""
    import sys

    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
    from torch.utils._pytree import tree_map
    from transformers import vision_utils

    mode = _fake_mode()
    names = ["get_vision_window_index"]

    def wrap(fn):
        def run(*args, **kwargs):
            real = lambda t: t.constant if isinstance(t, FakeTensor) and t.constant is not None else t  # noqa: E731
            with unset_fake_temporarily():
                out = fn(*tree_map(real, args), **{k: (v if k == "kwargs" else tree_map(real, v))
                                                  for k, v in kwargs.items()})
            return tree_map(lambda t: mode.fake_tensor_converter.from_real_tensor(mode, t, make_constant=True)
                            if isinstance(t, torch.Tensor) and not isinstance(t, FakeTensor) else t, out)
        return run

    patched = []
    for module in [m for k, m in list(sys.modules.items()) if k.startswith("transformers.models.") and m]:
        for name in names:
            original = module.__dict__.get(name)
            if original is not None and original is getattr(vision_utils, name):
                patched.append((module, name, original))
                setattr(module, name, wrap(original))
    return patched


def _rope_positions(cfg, ints: dict[str, torch.Tensor]) -> torch.Tensor:
    """Qwen2-VL's 3-D rope positions, by the model class's own ``get_rope_index`` (it reads only
    the config), made with the inputs: as untracked as ``input_ids`` in both modes, and its
    data-dependent loop never sees a fake tensor."""
    import sys

    from .config import model_class

    outer = model_class(cfg.architectures[0])
    inner = getattr(sys.modules[outer.__module__], outer.__name__.replace("ForConditionalGeneration", "Model"), None)
    if inner is None or not hasattr(inner, "get_rope_index"):
        raise WorkloadError(f"{outer.__name__}: no get_rope_index to compute its 3-D rope positions from")
    stub = type("RopeIndex", (), {k: getattr(inner, k) for k in ("get_rope_index", "get_vision_position_ids")
                                  if hasattr(inner, k)})()
    stub.config = cfg
    positions, _ = stub.get_rope_index(ints["input_ids"], mm_token_type_ids=ints["mm_token_type_ids"],
                                       image_grid_thw=ints["image_grid_thw"])
    return positions


@functools.lru_cache(maxsize=None)
def is_image_text_class(class_name: str) -> bool:
    from transformers.models.auto import modeling_auto as ma

    for value in ma.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values():
        if class_name in ((value,) if isinstance(value, str) else tuple(value)):
            return True
    return False
