"""Network emulation for end-to-end benchmarks (this kernel has no netem).

- `emulation.Emulation`: edge -> shaped uplink -> delay/jitter relay -> cloud, with `mode` to label results.
- `relay.DelayRelay`: user-space TCP relay, per-direction delay and jitter without reordering, and
  optionally an uplink that follows a trace packet by packet (`trace_gate.TraceGate`) or a token-bucket
  rate ("relay" mode, no root needed; the default, and the only mode that follows a real trace
  faithfully on this kernel: see `emulation.choose_mode`).
- `trace_gate.TraceGate`: when bytes may leave a mahimahi link (the simulator's rule), in real time.
- `namespaces.EmulatedLink`: an edge network namespace joined to the root namespace by a veth pair,
  the uplink shaped by htb or tbf ("netns+htb" / "netns+tbf", root only; accurate at fixed rates).
- `follower.TraceFollower`: re-sets a rate every 100 ms to a mahimahi trace's capacity over that step.
"""
