"""A learned bottleneck: a small encoder on the edge, a decoder on the cloud, an entropy-coded latent.

`entropy` (numpy + constriction) is all the edge and the cloud need at run time; `model` and `train`
(torch) are offline tooling and are imported only by `splitrt codecs train-bottleneck`.
"""
