"""Quality of the trained synthetic-world models on held-out images, measured through the harness's own loaders.

The training script records these figures in the model card; a test re-measures the committed files against them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.data import world
from harness.models.captioning import generate_captions
from harness.models.clip_score import ClipScorer, clip_score_matrix


def caption_quality(
    loaded, pairs: Sequence[tuple[world.Scene, object]], *, batch_size: int = 64, keep_captions: bool = False
) -> dict:
    """Greedy captions of held-out images against their scenes: exact match and attribute accuracy (and, with
    `keep_captions`, every caption's text under "captions")."""
    captions = generate_captions(loaded, [image for _, image in pairs], max_new_tokens=24, batch_size=batch_size)
    per_attribute = dict.fromkeys(world.ATTRIBUTES, 0)
    exact = 0
    for (scene, _), caption in zip(pairs, captions, strict=True):
        exact += caption.text == scene.caption
        for name, hit in world.attribute_hits(scene, caption.text).items():
            per_attribute[name] += hit
    count = len(pairs)
    return {
        "images": count,
        "exact_match": exact / count,
        "attribute_accuracy": sum(per_attribute.values()) / (count * len(world.ATTRIBUTES)),
        "per_attribute": {name: hits / count for name, hits in per_attribute.items()},
        "examples": [caption.text for caption in captions[:4]],
        **({"captions": [caption.text for caption in captions]} if keep_captions else {}),
    }


def clip_quality(scorer: ClipScorer, pairs: Sequence[tuple[world.Scene, object]]) -> dict:
    """Image→caption retrieval among every caption of the world, and true-caption vs other-category scores."""
    candidates = world.all_scenes()
    index = {scene: i for i, scene in enumerate(candidates)}
    scores = clip_score_matrix(
        scorer.image_features([image for _, image in pairs]),
        scorer.text_features([scene.caption for scene in candidates]),
    )
    truth = torch.tensor([index[scene] for scene, _ in pairs])
    shapes = [scene.shape for scene in candidates]
    other_category = torch.tensor([[shape != scene.shape for shape in shapes] for scene, _ in pairs])
    return {
        "images": len(pairs),
        "candidate_captions": len(candidates),
        "retrieval_top1": float((scores.argmax(1) == truth).float().mean()),
        "true_caption_score": float(scores.gather(1, truth[:, None]).mean()),
        "other_category_score": float(scores[other_category].mean()),
    }
