from __future__ import annotations

import numpy as np
import pytest

from splitrt.policies.prefilter import FEATURES, FrameResult, FrameSignature, Prefilter, replay, tune_threshold


def scene(rng: np.random.Generator, x: int, brightness: float = 250) -> np.ndarray:
    """A textured background with a square at column x, plus sensor noise."""
    base = np.tile(np.linspace(40, 200, 160, dtype=np.float32), (120, 1))
    base[40:80, x : x + 30] = brightness
    noisy = base + rng.normal(0, 2, base.shape)
    return np.repeat(np.clip(noisy, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


@pytest.mark.parametrize("feature", FEATURES)
def test_an_unchanged_frame_is_skipped_and_a_changed_one_admitted(feature: str, rng: np.random.Generator) -> None:
    prefilter = Prefilter(feature, threshold=0.05)  # noise moves every feature by < 0.02, the change by > 0.1
    assert prefilter.admit(scene(rng, 10))  # the first frame is always processed
    assert not prefilter.admit(scene(rng, 10))  # same scene, new noise
    assert prefilter.admit(scene(rng, 100, brightness=10))  # a different object, elsewhere


def test_skipping_delivers_the_reference_result_and_tuning_meets_its_target(rng: np.random.Generator) -> None:
    positions = [10] * 20 + [60] * 20 + [110] * 20
    signatures = [FrameSignature.of(scene(rng, x)) for x in positions]
    results = [FrameResult(x, frozenset({x, x + 1})) for x in positions]
    outcome = tune_threshold("pixel", signatures, results, target_agreement=1.0)
    assert outcome.agreement_top1 == 1.0
    assert outcome.skipped >= 0.9  # only the three scene changes need processing
    everything = replay("pixel", 0.0, signatures, results)
    assert everything.skipped == 0.0 and everything.agreement_top1 == 1.0


def test_unknown_feature_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown prefilter feature"):
        Prefilter("optical-flow")
