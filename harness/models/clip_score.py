"""CLIP score of (image, caption) pairs with a real open_clip model: 100·max(cos, 0), as in CLIPScore."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from harness.core.errors import ModelUnavailableError, UnknownNameError
from harness.core.store import ensure_built
from harness.models.registry import ClipSpec

LOCAL_DIR = "local-dir:"


class ClipScorer:
    """An open_clip model, its preprocessing and tokenizer, in eval mode on one device."""

    def __init__(self, spec: ClipSpec, *, cache_dir: Path, device: torch.device, allow_download: bool = False):
        import open_clip

        model_name, pretrained = spec.model_name, spec.pretrained
        if spec.embedded is not None:
            model_name, pretrained = LOCAL_DIR + str(ensure_built(spec.embedded, cache_dir)), None
        elif model_name.startswith(LOCAL_DIR):
            folder = Path(model_name[len(LOCAL_DIR) :]).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise ModelUnavailableError(
                    f"CLIP folder {str(folder)!r} has no open_clip_config.json; write one with open_clip's "
                    "push_to_hf_hub format or pass a built-in name with --can-clip-model/--can-clip-pretrained"
                )
        else:
            check_clip_name(spec)
            _check_pretrained_available(model_name, pretrained, allow_download)
        self.spec, self.device = spec, device
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device
        )
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """[N, D] unit-norm float32 image embeddings."""
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(image) for image in images[start : start + batch_size]])
            chunks.append(self.model.encode_image(pixels.to(self.device)).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """[N, D] unit-norm float32 text embeddings (open_clip truncates to its context length)."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            chunks.append(self.model.encode_text(tokens).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


def clip_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """[N] score of row-aligned pairs: 100·max(cos, 0)."""
    return 100.0 * (image_features * text_features).sum(-1).clamp(min=0)


def clip_score_matrix(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """[N_images, N_texts] score of every pairing (used for the chance level)."""
    return 100.0 * (image_features @ text_features.T).clamp(min=0)


def check_clip_name(spec: ClipSpec) -> None:
    """A named model must exist in open_clip and come with a pretrained tag it knows: a randomly initialised CLIP
    would score every caption as noise. (`local-dir:` folders and embedded CLIPs carry their own weights.)"""
    import open_clip

    if spec.embedded is not None or spec.model_name.startswith(LOCAL_DIR):
        return
    if spec.model_name not in open_clip.list_models():
        raise UnknownNameError("open_clip model", spec.model_name, open_clip.list_models())
    known = spec.pretrained is not None and (
        bool(open_clip.get_pretrained_cfg(spec.model_name, spec.pretrained)) or os.path.isfile(spec.pretrained)
    )
    if not known:
        tags = open_clip.list_pretrained_tags_by_model(spec.model_name)
        raise UnknownNameError(f"pretrained tag (or weight file) for {spec.model_name}", spec.pretrained, tags)


def _check_pretrained_available(model_name: str, tag: str, allow_download: bool) -> None:
    """Raise ModelUnavailableError (cases skip) when the weights for `tag` are not cached and may not download."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if os.path.isfile(tag) or allow_download:
        return
    config = open_clip.get_pretrained_cfg(model_name, tag)
    if config.get("hf_hub"):
        repo, filename = os.path.split(config["hf_hub"])
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if any(isinstance(try_to_load_from_cache(repo, name), str) for name in names):
            return
        where = f"Hugging Face repo {repo!r}"
    else:
        where = config.get("url", "its download URL")
        if (Path("~/.cache/clip").expanduser() / os.path.basename(where)).is_file():
            return
    raise ModelUnavailableError(
        f"CLIP {model_name}/{tag}: weights from {where} are not cached on this machine. To make them available: "
        f"run `python -c \"import open_clip; open_clip.create_model_and_transforms('{model_name}', "
        f"pretrained='{tag}')\"` on a machine with internet and copy its Hugging Face cache here, pass a local "
        "open_clip folder with --can-clip-model local-dir:/path, or allow downloads with --can-allow-download"
    )
