"""Models: the registry and its families, loading (GGUF, device maps), sites, masks, prompts, captioning, CLIP
scoring — everything that touches a model's modules (the zoo of embedded models sits beside it)."""
