"""The built-in probes, each registered by its module (harness.runner.probe.get_probe imports this package
first): captioning (vision-language models), continuation (text-only models), vqa (questions about the synthetic
world's images)."""

from harness.runner.probes import captioning, continuation, vqa

__all__ = ["captioning", "continuation", "vqa"]
