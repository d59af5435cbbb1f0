"""Estimators fed by what frames observe: uplink throughput, round-trip time, cloud queue delay, device time.

All are pure: they take observations with timestamps and never read a clock themselves.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from splitrt.policies.policies import LinkView, PlattScaling, calibrated_chance, logit


# The uplink rate believed before any transfer is seen, by the edge runtime, the daemon and the simulator alike
# (so what the benchmarks measure is what ships).
PRIOR_UPLINK_BPS = 1e6
# The mean deviation of the log rate believed before any transfer is seen.
INITIAL_LOG_DEV = 0.3
# A normal's standard deviation per mean deviation.
SD_PER_MEAN_DEV = math.sqrt(math.pi / 2)


@dataclass
class ThroughputEstimator:
    """Uplink bits/s from real transfers: bytes over (send-to-reply time minus cloud time minus RTT).

    An EWMA of the log rate (rates vary over orders of magnitude) with a mean deviation, so the policy can
    ask for a cautious value. A sample far below the estimate is taken at once (a link that collapses is
    believed immediately); recovery is gradual. A transfer that has not finished after `elapsed_ms` bounds
    the rate from above: `observe_timeout` applies that bound at once.

    An estimate grows stale while nothing is sent: what the link did a second ago says little about now on a
    cellular uplink. `relaxed(now_ms)` lets it relax towards what the link delivered over the `history_ms` up to
    the last observation (the mean and mean deviation of the log rates of its samples and timeout bounds), with time
    constant `relax_ms` since the last observation. A slow sample or a timeout thus pins the estimate only for a while:
    on a link whose stops are short, the policy sends again once a stop is likely over, as the link's own
    recent past says; on a link that has been poor all along, that past says so too. Timeouts in a row mean a
    longer stop: the time constant doubles with each after the first (up to `max_relax_backoff` times), as the
    probes' interval does (`ProbeSchedule`), so a dead link costs ever fewer frames.
    """

    initial_bps: float = PRIOR_UPLINK_BPS
    alpha: float = 0.3
    alpha_up: float = 0.6  # for a sample far above the estimate: a link that comes back is believed soon
    drop_ratio: float = 0.5
    max_log_dev: float = 1.0  # caution never asks for less than 1/e of the estimate
    floor_bps: float = 1e3
    history_ms: float = 60_000.0
    relax_ms: float = 1_000.0
    max_relax_backoff: int = 8
    min_history: int = 3  # fewer samples than this in the window: no relaxation (the past is not known yet)
    _log_rate: float = field(init=False)
    _log_dev: float = field(init=False, default=INITIAL_LOG_DEV)
    _history: collections.deque[tuple[float, float]] = field(init=False)  # (ms, log rate) of samples and bounds
    _past: tuple[float, float] | None = field(init=False, default=None)  # the history's mean and mean deviation
    _observed_ms: float = field(init=False, default=-math.inf)  # when the last sample or bound came
    _timeouts_in_row: int = field(init=False, default=0)
    samples: int = field(init=False, default=0)
    last_sample_ms: float = field(init=False, default=-math.inf)  # also set by the edge when it sends a probe

    def __post_init__(self) -> None:
        self._log_rate = math.log(self.initial_bps)
        self._history = collections.deque()

    @property
    def estimate_bps(self) -> float:
        return math.exp(self._log_rate)

    @property
    def log_sd(self) -> float:
        """Spread of the log rate as a standard deviation."""
        return SD_PER_MEAN_DEV * self._log_dev

    @property
    def initial_log_sd(self) -> float:
        """The spread believed before any transfer was seen (`log_sd` at the start)."""
        return SD_PER_MEAN_DEV * INITIAL_LOG_DEV

    def cautious_bps(self, deviations: float = 1.0) -> float:
        """A rate the link reaches most of the time: the estimate minus `deviations` mean deviations (in log)."""
        return max(self.floor_bps, math.exp(self._log_rate - deviations * self._log_dev))

    def observe(self, now_ms: float, size_bytes: int, transfer_ms: float) -> None:
        rate = max(self.floor_bps, size_bytes * 8 / max(transfer_ms, 0.1) * 1000.0)
        sample = math.log(rate)
        error = sample - self._log_rate
        if rate < self.drop_ratio * self.estimate_bps:
            self._log_rate = sample
        else:
            gain = self.alpha_up if rate > self.estimate_bps / self.drop_ratio else self.alpha
            self._log_rate += gain * error
        self._log_dev = min(self.max_log_dev, self._log_dev + self.alpha * (abs(error) - self._log_dev))
        self.samples += 1
        self.last_sample_ms = now_ms
        self._timeouts_in_row = 0
        self._remember(now_ms, sample)

    def observe_timeout(self, now_ms: float, size_bytes: int, elapsed_ms: float) -> None:
        """`size_bytes` did not get through in `elapsed_ms`: the rate is at most that."""
        bound = max(self.floor_bps, size_bytes * 8 / max(elapsed_ms, 0.1) * 1000.0)
        if bound < self.estimate_bps:
            self._log_rate = math.log(bound)
            self._log_dev = max(self._log_dev, 0.5)
        self.last_sample_ms = now_ms
        self._timeouts_in_row += 1
        self._remember(now_ms, math.log(bound))

    def _remember(self, now_ms: float, log_rate: float) -> None:
        self._observed_ms = now_ms
        self._history.append((now_ms, log_rate))
        while self._history[0][0] < now_ms - self.history_ms:
            self._history.popleft()
        # summarised here, once per observation, rather than in `relaxed`, which every frame's view asks
        values = [value for _, value in self._history]
        mean = sum(values) / len(values)
        deviation = sum(abs(v - mean) for v in values) / len(values)
        self._past = (mean, deviation) if len(values) >= self.min_history else None

    def relaxed(self, now_ms: float) -> tuple[float, float]:
        """(rate in bits/s, sd of the log rate) believed at `now_ms`: the estimate and its mean deviation, relaxed
        towards the window's mean and mean deviation (of log rates) by exp(-(time since the last observation) /
        time constant), the time constant `relax_ms`, doubled for each timeout in a row after the first."""
        if self._past is None:  # fewer than `min_history` observations in the window
            return self.estimate_bps, self.log_sd
        mean, deviation = self._past  # of the `history_ms` up to the last observation
        backoff = min(2 ** max(self._timeouts_in_row - 1, 0), self.max_relax_backoff)
        kept = math.exp(-max(now_ms - self._observed_ms, 0.0) / (self.relax_ms * backoff))
        log_dev = min(self.max_log_dev, deviation + kept * (self._log_dev - deviation))
        return math.exp(mean + kept * (self._log_rate - mean)), SD_PER_MEAN_DEV * log_dev


@dataclass
class EwmaEstimator:
    """A plain EWMA, for the cloud's queue delay (from every Result) and per-action device time."""

    initial: float = 0.0
    alpha: float = 0.2
    value: float = field(init=False)
    samples: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.value = self.initial

    def observe(self, sample: float) -> None:
        self.value = sample if self.samples == 0 else self.value + self.alpha * (sample - self.value)
        self.samples += 1


@dataclass
class DeviceSlowdown:
    """How much slower the device runs now than its options' measured times say: an EWMA of
    ln(observed / typical) over every frame's device part (the action it ran, and a hedge that ran to the end),
    whatever the action. The host's speed moves all actions alike (thermal throttling, other processes, a shared
    machine), so every frame tells about all of them. The learnt part is capped at `max_factor` either way.

    `contention` is how much other processes on the device slow a run now (1: not at all; the edge sets it from
    psutil before each frame, `splitrt.edge.cpu_load`). A frame's observation is taken net of the contention it
    ran under, and the factor is the learnt part times the contention now: a load that starts or stops counts
    from the next frame on, not after the frames that follow have shown it."""

    alpha: float = 0.1
    max_factor: float = 4.0
    contention: float = 1.0
    _log: float = 0.0

    @property
    def factor(self) -> float:
        return math.exp(self._log) * self.contention

    def observe(self, observed_ms: float, typical_ms: float, contention: float | None = None) -> None:
        """A run took `observed_ms` where its option says `typical_ms`, under `contention` (None: the current
        `self.contention`)."""
        contention = self.contention if contention is None else contention
        if observed_ms <= 0.0 or typical_ms <= 0.0 or contention <= 0.0:
            return
        cap = math.log(self.max_factor)
        self._log += self.alpha * (min(max(math.log(observed_ms / typical_ms / contention), -cap), cap) - self._log)


@dataclass
class OnTimeCalibration:
    """How far to trust the model's on-time chance of a remote action, learnt from its frames' outcomes (hedged
    ones; every remote one for a policy that asks, `teaches_on_time`).

    Platt scaling (`PlattScaling`), fitted online: sigmoid(a + b * logit(p)) with (a, b) per remote part
    (`ActionOption.remote_key`), starting at the identity (0, 1), and one step of stochastic gradient descent on
    the log loss per outcome (the model's chance p when the frame was decided; whether its reply came by the
    deadline). A link whose next packets the estimate cannot foresee (clumped delivery) drives b towards 0 and
    a towards the action's recent hit rate; a link the model reads well leaves them near the identity. The
    step size sets the memory: at 0.05, the last twenty or so of the action's frames. A fit not updated for
    `hold_ms` keeps less and less of its pessimism (time constant `relax_ms`; see `PlattScaling`), so an
    action that a bad spell made look hopeless, and that is therefore no longer sent, is tried again once that
    spell is old.
    """

    learning_rate: float = 0.05
    hold_ms: float = 30_000.0
    relax_ms: float = 20_000.0
    _fitted: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # key: (a, b, when fitted, ms)

    def scalings(self, now_ms: float) -> dict[str, PlattScaling]:
        """The calibration of each key as of `now_ms`."""
        return {key: self._scaling(key, now_ms) for key in self._fitted}

    def _scaling(self, key: str, now_ms: float) -> PlattScaling:
        a, b, when_ms = self._fitted[key]
        return PlattScaling(a, b, math.exp(-max(now_ms - when_ms - self.hold_ms, 0.0) / self.relax_ms))

    def observe(self, now_ms: float, key: str, model_chance: float, on_time: bool) -> None:
        if model_chance <= 0.0:  # no time for the transfer at all: the model is not guessing, nothing to learn
            return
        a, b, _ = self._fitted.get(key, (0.0, 1.0, now_ms))
        error = float(on_time) - PlattScaling(a, b)(model_chance)
        x = logit(model_chance)
        self._fitted[key] = (a + self.learning_rate * error, b + self.learning_rate * error * x, now_ms)

    def chance(self, now_ms: float, key: str, model_chance: float) -> float:
        return calibrated_chance(model_chance, self._scaling(key, now_ms) if key in self._fitted else None)


@dataclass
class LinkEstimates:
    """What the edge knows of the link, from what its frames observed: the uplink rate, the RTT, the cloud's
    queue delay, whether the cloud could be reached. The edge runtime (`AdaptiveRuntime`) and the simulator keep
    one each and feed it the same observations, so a policy sees the same view in both.

    A remote frame's `network_ms` (its round trip less the cloud's queue and compute) is the RTT plus the
    upload; the rest after the RTT is the transfer. The RTT is a windowed minimum (as BBR keeps) over round
    trips that carry no upload (heartbeats, `observe_rtt`; until there are any, the configured `initial_rtt_ms`)
    and frames' network times: a frame's network time is only an upper bound, since every frame uploads
    something, and taking the least of them alone would make the fastest frame's upload look instantaneous. A
    frame that timed out bounds the rate from above. Hedged frames (for `deadline-tracking`, every remote frame)
    also teach the on-time calibration (`OnTimeCalibration`), which the view carries for the deadline policy.
    """

    initial_bps: float = PRIOR_UPLINK_BPS
    initial_rtt_ms: float = 40.0
    rtt_window: int = 30
    retry_ms: float = 1000.0  # after a request could not even be sent, the cloud counts as away this long
    rtt_caution: float = 1.25  # the cautious RTT, as a multiple of the estimate
    throughput: ThroughputEstimator = field(init=False)
    unreachable_since_ms: float | None = None
    queue_ms: EwmaEstimator = field(default_factory=EwmaEstimator)
    on_time: OnTimeCalibration = field(default_factory=OnTimeCalibration)
    device: DeviceSlowdown = field(default_factory=DeviceSlowdown)
    _network_ms: collections.deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.throughput = ThroughputEstimator(initial_bps=self.initial_bps)
        self._network_ms = collections.deque(maxlen=self.rtt_window)
        self._rtt_samples_ms = collections.deque(maxlen=self.rtt_window)

    @property
    def rtt_ms(self) -> float:
        upload_free_ms = min(self._rtt_samples_ms) if self._rtt_samples_ms else self.initial_rtt_ms
        return min(upload_free_ms, min(self._network_ms, default=math.inf))

    def observe_rtt(self, rtt_ms: float) -> None:
        """A round trip that carried no upload (a heartbeat's)."""
        self._rtt_samples_ms.append(rtt_ms)

    def reachable(self, now_ms: float) -> bool:
        return self.unreachable_since_ms is None or now_ms - self.unreachable_since_ms >= self.retry_ms

    def view(self, cloud_up: bool, now_ms: float, deviations: float = 1.0) -> LinkView:
        relaxed_bps, relaxed_log_sd = self.throughput.relaxed(now_ms)
        return LinkView(
            bandwidth_bps=self.throughput.estimate_bps,
            cautious_bandwidth_bps=self.throughput.cautious_bps(deviations),
            rtt_ms=self.rtt_ms,
            cautious_rtt_ms=self.rtt_ms * self.rtt_caution,
            queue_ms=self.queue_ms.value,
            cloud_up=cloud_up and self.reachable(now_ms),
            bandwidth_log_sd=self.throughput.log_sd,
            relaxed_bandwidth_bps=relaxed_bps,
            relaxed_log_sd=relaxed_log_sd,
            on_time_calibration=self.on_time.scalings(now_ms),
            device_slowdown=self.device.factor,
        )

    def observe_reply(self, now_ms: float, size_bytes: int, network_ms: float, queue_ms: float) -> None:
        """A remote frame answered in time: `size_bytes` went up, `network_ms` was its round trip less the cloud."""
        self.unreachable_since_ms = None
        self._network_ms.append(network_ms)
        self.throughput.observe(now_ms, size_bytes, max(network_ms - self.rtt_ms, 0.5))
        self.queue_ms.observe(queue_ms)

    def observe_timeout(self, now_ms: float, size_bytes: int, network_ms: float) -> None:
        """A remote frame gave up after waiting `network_ms` for its reply."""
        self.unreachable_since_ms = None
        self.throughput.observe_timeout(now_ms, size_bytes, max(network_ms - self.rtt_ms, 0.5))

    def observe_unreachable(self, now_ms: float) -> None:
        """A request could not even be sent (no connection to the cloud)."""
        self.unreachable_since_ms = now_ms
