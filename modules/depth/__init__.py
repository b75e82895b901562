"""Depth: monocular depth estimators (shared with ControlNet's depth preprocessors), depth2img conditioning for
Stable Diffusion 2's depth checkpoints, and the Depth tab's maps and files.

`estimators` is the registry (`names()`, `estimate()`); each estimator family lives in its own module.
"""
