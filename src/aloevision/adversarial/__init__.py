"""Adversarial robustness (paper §4, §5.1, Table 4): the four HEART attacks, the FracAtlas AR training set, and the
HEART-style robustness benchmark with its scoring."""
