"""The embedded demo world: four text domains, a local tokenizer, a teacher and a weaker student.

    from harness.demo import ensure_world
    world = ensure_world(kdh_home(), "default")   # built once, cached under <home>/demo/default
    world.domain_file("code", "test_mc.jsonl")
"""

from harness.demo.build import World, ensure_world
from harness.demo.corpus import DOMAINS, SplitOverlapError

__all__ = ["DOMAINS", "SplitOverlapError", "World", "ensure_world"]
