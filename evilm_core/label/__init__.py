"""Offline MVM label cache: the tokenizer's codes for every video, computed once (DESIGN 5)."""

from evilm_core.label.cache import FORMAT_VERSION, CacheKeyError, LabelCache, choose_candidates, parse_shard

__all__ = ["FORMAT_VERSION", "CacheKeyError", "LabelCache", "choose_candidates", "parse_shard",
           "collect_videos", "label_videos", "merge_shards", "run_label"]


def __getattr__(name):  # the labeller pulls in the tokenizer and the data stack: import it on use
    if name in ("collect_videos", "label_videos", "merge_shards", "run_label"):
        from evilm_core.label import labeler

        return getattr(labeler, name)
    raise AttributeError(name)
