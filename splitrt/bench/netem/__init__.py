"""Network emulation for end-to-end benchmarks: a shaped veth uplink between an edge network namespace
and the root namespace ("netns+tbf"), or, without root, a rate-limiting relay ("relay"); a follower that
makes the rate follow a mahimahi trace; a relay that adds delay and jitter (this kernel has no netem)."""
