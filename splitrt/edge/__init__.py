"""The edge agent.

runtime   EdgeRuntime: one frame (`infer`) or a stream (`run`), local/split/offload, fallback while the cloud is away
link      CloudLink: a plain DEALER link (handshake, request by frame id)
failover  ResilientLink: heartbeats, loss detection, reconnect with backoff, re-handshake
health    the pure liveness rules behind ResilientLink (injected clock)
stream    latest-frame-wins slot and the asyncio pipeline behind `EdgeRuntime.run`
sources   image folders, paced frames, video files and cameras (PyAV)
webrtc    aiortc video tracks as sources; a loopback peer connection
config    the daemon's TOML configuration, validated
daemon    `splitrt edge daemon`: outputs, metrics, structured logs, SIGTERM
metrics   Prometheus metrics
agent     `splitrt edge run`: images through a list of actions, compared
"""
