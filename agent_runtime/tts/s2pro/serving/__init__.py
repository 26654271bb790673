"""Pooled S2-Pro serving engine: many calls share one slot pool and one step per frame (issue 11).

`contract.py` is the boundary between the device side (`decoder.py`: the slot pool and the step)
and the host side (`engine.py`: prompts, prefix cache, the scheduler thread, streams).
"""
